from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

AGENT_SCOPE_MESSAGE = (
    "agent keys only reach the agent API (/api/v1/agent/...); use an organization key here"
)


def _caller(request: Request) -> Any:
    return getattr(request, "caller", None)


def view_admits_scope(view: Any, scope: str) -> bool:
    """Whether a view takes API keys of this scope (core.models.ApiKey.Scope). Every view
    takes organization keys; agent keys only where one of the view's permission classes
    says ``admits_agent_keys = True`` (the agent API, usage reports). Checked by the
    authenticator, so a view is closed to agent keys unless it opens itself."""
    if scope == "org":
        return True
    permission_classes = getattr(view, "permission_classes", None) or ()
    return scope == "agent" and any(
        getattr(permission, "admits_agent_keys", False) for permission in permission_classes
    )


class IsOrgMember(BasePermission):
    """The default: any authenticated member of an organization."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return _caller(request) is not None


class IsOrgAdmin(BasePermission):
    message = "this needs the admin role in your organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = _caller(request)
        return caller is not None and caller.role == "admin"


class IsOrgFinance(BasePermission):
    message = "this needs the finance or admin role in your organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = _caller(request)
        return caller is not None and caller.is_finance


class IsPlatformFinance(BasePermission):
    message = "this needs the finance role in the operator organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = _caller(request)
        return caller is not None and caller.is_platform_finance


def _buyer_caller(request: Request) -> Any:
    caller = _caller(request)
    return caller if caller is not None and caller.organization.is_buyer else None


class IsBuyerMember(BasePermission):
    """Any role of a buyer organization: reads."""

    message = "this needs a buyer organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        return _buyer_caller(request) is not None


class IsBuyerOperator(BasePermission):
    """Admins and members of a buyer organization: orders, jobs, inference (work that
    spends the org's credit). Finance staff read."""

    message = "this needs the admin or member role in a buyer organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = _buyer_caller(request)
        return caller is not None and caller.role in ("admin", "member")


class IsBuyerOperatorForWrites(BasePermission):
    """Any role of a buyer organization reads (GET, HEAD, OPTIONS); writes need the
    admin or member role (the /v1/ API: a finance key sees jobs, files and models but
    starts no work)."""

    message = "this needs the admin or member role in a buyer organization (finance keys read)"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = _buyer_caller(request)
        if caller is None:
            self.message = IsBuyerMember.message
            return False
        return request.method in SAFE_METHODS or caller.role in ("admin", "member")


class IsBuyerPayer(BasePermission):
    """Admins and finance staff of a buyer organization: paying in (top-ups, saved
    payment methods, auto-recharge)."""

    message = "this needs the admin or finance role in a buyer organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = _buyer_caller(request)
        return caller is not None and caller.is_finance
