from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


def _caller(request: Request) -> Any:
    return getattr(request, "caller", None)


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
