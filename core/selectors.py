"""Reads of the shared kernel's tenancy part."""

from __future__ import annotations

import hmac

from django.db.models import QuerySet

from core.errors import NotFound
from core.models import ApiKey, Membership, Organization
from core.services import API_KEY_PREFIX, hash_api_key


def api_key_for_secret(*, raw_key: str) -> ApiKey | None:
    """The live key whose secret this is, compared in constant time; None otherwise."""
    parts = raw_key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not parts[1]:
        return None
    api_key = (
        ApiKey.objects.select_related("organization")
        .filter(prefix=parts[1], revoked_at=None)
        .first()
    )
    if api_key is None or not hmac.compare_digest(api_key.hashed_key, hash_api_key(raw_key)):
        return None
    return api_key


def membership_for_user(*, user, organization_id: str | None) -> Membership | None:
    memberships = Membership.objects.select_related("organization").filter(user=user)
    if organization_id:
        if not organization_id.isdigit():
            return None
        return memberships.filter(organization_id=int(organization_id)).first()
    found = list(memberships[:2])
    return found[0] if len(found) == 1 else None


def api_keys_for_org(*, organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization)


def api_key_get(*, organization: Organization, api_key_id: int) -> ApiKey:
    """One of ``organization``'s keys; another organization's is as good as absent."""
    api_key = ApiKey.objects.filter(organization=organization, pk=api_key_id).first()
    if api_key is None:
        raise NotFound(f"no API key {api_key_id} in your organization")
    return api_key
