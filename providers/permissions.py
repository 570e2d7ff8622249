"""Who may use the provider portal and the agent API: provider organizations only."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


def _provider_caller(request: Request) -> Any:
    caller = getattr(request, "caller", None)
    return caller if caller is not None and caller.organization.is_provider else None


class IsProviderMember(BasePermission):
    """Any role of a provider organization: reads."""

    message = "this needs a provider organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        return _provider_caller(request) is not None


def is_provider_operator(caller: Any) -> bool:
    """Admins and members of a provider organization: listing capacity, agents.
    Finance staff read only."""
    return (
        caller is not None
        and caller.organization.is_provider
        and caller.role in ("admin", "member")
    )


class IsProviderOperator(BasePermission):
    message = "this needs the admin or member role in a provider organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_provider_operator(getattr(request, "caller", None))


class IsProviderAdmin(BasePermission):
    message = "this needs the admin role in a provider organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = _provider_caller(request)
        return caller is not None and caller.role == "admin"
