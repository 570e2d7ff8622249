"""``Authorization: Bearer tdm_...`` API keys, and session users for the portal.

Both end with ``request.caller`` (a ``core.tenancy.Caller``) set; views read the
organization from there and nowhere else.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from core import selectors, services
from core.converters import BIGINT_MAX, parse_whole_number
from core.errors import InvalidHeader
from core.models import ApiKey
from core.permissions import AGENT_SCOPE_MESSAGE, view_admits_scope
from core.tenancy import Caller


def api_key_caller(authorization: bytes) -> tuple[Caller, ApiKey] | None:
    """The caller an ``Authorization: Bearer <api key>`` header names, and its key;
    None when the header is absent or names another scheme. A malformed, unknown or
    revoked key raises AuthenticationFailed (a 401): the key is looked up on every
    request, so revoking one takes effect at once. Views that are not DRF's (the
    agent heartbeat) call this directly."""
    header = authorization.split()
    if not header or header[0].lower() != b"bearer":
        return None
    if len(header) != 2:
        raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <api key>'")
    try:
        raw_key = header[1].decode("ascii")
    except UnicodeDecodeError:
        raise exceptions.AuthenticationFailed("API key must be ASCII") from None
    api_key = selectors.api_key_for_secret(raw_key=raw_key)
    if api_key is None:
        raise exceptions.AuthenticationFailed("invalid or revoked API key")
    services.api_key_touch(api_key=api_key)
    caller = Caller(
        organization=api_key.organization,
        role=api_key.role,
        api_key_id=api_key.pk,
        scope=api_key.scope,
    )
    return caller, api_key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        found = api_key_caller(authentication.get_authorization_header(request))
        if found is None:
            return None
        request.caller, api_key = found  # type: ignore[attr-defined]
        view = (getattr(request, "parser_context", None) or {}).get("view")
        if not view_admits_scope(view, api_key.scope):
            # Raised here, not left to each view's permission classes, so a view that
            # forgets agent keys refuses them (AllowAny ones too): a stolen agent key
            # reaches the agent API of its own node and nothing else.
            raise exceptions.PermissionDenied(AGENT_SCOPE_MESSAGE)
        return (AnonymousUser(), api_key)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class SessionAuthentication(authentication.SessionAuthentication):
    """Portal sessions. The organization is the one named by ``X-Organization``
    (an id) or, when the user belongs to exactly one, that one."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        wanted = request.headers.get("X-Organization")
        organization_id = None
        if wanted:
            organization_id = parse_whole_number(wanted, low=1, high=BIGINT_MAX)
            if organization_id is None:
                raise InvalidHeader(
                    f"X-Organization must be an organization id: a whole number from 1 to "
                    f"{BIGINT_MAX}",
                    header="X-Organization",
                )
        membership = selectors.membership_for_user(user=user, organization_id=organization_id)
        if membership is None:
            raise exceptions.AuthenticationFailed(
                "X-Organization must name one of your organizations"
            )
        request.caller = Caller(  # type: ignore[attr-defined]
            organization=membership.organization, role=membership.role, user_id=user.pk
        )
        return result
