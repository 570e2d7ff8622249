"""What the payments endpoints share: their error responses in the schema, the
caller as an actor, amounts parsed from decimal text, and the provider permissions."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import (
    OpenApiResponse,
)
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from core.errors import InvalidInput
from core.money import Money, MoneyError
from core.schema import ErrorSerializer
from core.schema import error_responses as core_error_responses
from core.tenancy import Caller

_PAYMENT_ERRORS = {
    402: "Stripe declined the payment: try another payment method",
    503: "payments are not configured here, or Stripe did not answer (retry)",
}


def error_responses(*codes: int) -> dict[int, Any]:
    ours = {
        code: OpenApiResponse(response=ErrorSerializer, description=_PAYMENT_ERRORS[code])
        for code in codes
        if code in _PAYMENT_ERRORS
    }
    return {**core_error_responses(*(c for c in codes if c not in _PAYMENT_ERRORS)), **ours}


def _actor(caller: Caller) -> str:
    if caller.api_key_id is not None:
        return f"api_key:{caller.api_key_id}"
    return f"user:{caller.user_id}"


def _amount(text: str, field: str, currency: str) -> int:
    try:
        amount = Money.parse(text, currency).amount_micros
    except MoneyError as exc:
        raise InvalidInput(f"{field}: {exc}", details={"field": field}) from None
    if amount <= 0:
        raise InvalidInput(f"{field}: must be positive", details={"field": field})
    return amount


def _require_buyer(caller: Caller) -> None:
    if not caller.organization.is_buyer:
        raise InvalidInput(
            f"{caller.organization.name} is not a buyer organization",
            details={"organization": caller.organization.pk},
        )


class IsProviderAdmin(BasePermission):
    message = "this needs the admin role in a provider organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = getattr(request, "caller", None)
        return caller is not None and caller.role == "admin" and caller.organization.is_provider


class IsProviderMember(BasePermission):
    message = "this needs a provider organization (or the operator's finance staff)"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = getattr(request, "caller", None)
        return caller is not None and (
            caller.organization.is_provider or caller.is_platform_finance
        )
