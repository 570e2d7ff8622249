"""The one way payments talk to Stripe: a ``StripeClient`` built from settings.

- ``STRIPE_SECRET_KEY`` unset (the embedded default): nothing calls out; whatever
  needs Stripe raises ``PaymentsUnavailable`` (503 with a message saying so).
- ``STRIPE_API_BASE`` points the client elsewhere (localstripe in tests).
- Every POST carries an idempotency key derived from our own row's id, so a retry
  after a crash or a timeout is answered by Stripe with the first result.

Amounts: Stripe counts minor units (cents); the ledger counts micro-units.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import stripe
from django.conf import settings
from rest_framework import status

from core.errors import ApplicationError, InvalidInput
from core.money import CURRENCIES, MICROS


class PaymentsUnavailable(ApplicationError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "payments_unavailable"


class PaymentFailed(ApplicationError):
    """Stripe declined (a card error): the buyer should try another method."""

    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "payment_failed"


def stripe_configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def stripe_client() -> stripe.StripeClient:
    if not stripe_configured():
        raise PaymentsUnavailable(
            "payments are not configured on this server: set STRIPE_SECRET_KEY "
            "(and STRIPE_WEBHOOK_SECRET) to take payments and pay providers"
        )
    return _client(
        settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.STRIPE_MAX_NETWORK_RETRIES
    )


@lru_cache(maxsize=4)
def _client(api_key: str, api_base: str, retries: int) -> stripe.StripeClient:
    base: Any = {"api": api_base, "connect": api_base} if api_base else None
    return stripe.StripeClient(api_key, base_addresses=base, max_network_retries=retries)


def unavailable(exc: stripe.StripeError) -> PaymentsUnavailable:
    """Stripe did not answer (network, 5xx, rate limit): the caller may retry."""
    return PaymentsUnavailable(
        f"Stripe did not complete the request ({type(exc).__name__}); retry with the "
        "same Idempotency-Key",
        details={"stripe_error": str(getattr(exc, "user_message", None) or exc)[:300]},
    )


def is_transient(exc: stripe.StripeError) -> bool:
    """An error after which the same request may well succeed."""
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError | stripe.APIError):
        return True
    http_status = getattr(exc, "http_status", None)
    return http_status is None or http_status >= 500 or http_status == 409


# --- amounts ----------------------------------------------------------------


def _step(currency: str) -> int:
    return MICROS // 10 ** CURRENCIES[currency]


def to_minor(amount_micros: int, currency: str, *, field: str = "amount") -> int:
    """Micro-units to Stripe's minor units; the amount must be whole cents."""
    step = _step(currency)
    if amount_micros % step:
        raise InvalidInput(
            f"{field} must be a whole number of cents",
            details={"field": field},
        )
    return amount_micros // step


def floor_to_minor(amount_micros: int, currency: str) -> int:
    """The largest whole number of minor units not above ``amount_micros``."""
    return amount_micros // _step(currency)


def from_minor(amount: int, currency: str) -> int:
    return int(amount) * _step(currency)


def stripe_currency(currency: str) -> str:
    return currency.lower()


def ledger_currency(stripe_code: str) -> str:
    return str(stripe_code).upper()


def object_id(value: Any) -> str:
    """An expandable field's id, whether Stripe sent the id or the object."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(getattr(value, "id", "") or "")


def as_dict(obj: Any) -> dict[str, Any]:
    """A Stripe object as plain JSON-able dicts."""
    if isinstance(obj, dict) and not isinstance(obj, stripe.StripeObject):
        return obj
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
