from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
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
