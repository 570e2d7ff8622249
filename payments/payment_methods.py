"""A buyer's saved cards: the list Stripe holds for its customer, which one is the
default (charged by auto-recharge and invoice collection), and removing one.

Stripe holds the cards; we hold which one we charge (``StripeCustomer.
default_payment_method``). A change is written down first (a ``PaymentMethodChange``
row, committed), then sent to Stripe outside any transaction with an idempotency key
made from the row's id, then its answer is recorded, so a crash in between leaves a
pending row that says what was asked, and a retry of the same row asks Stripe once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe
from django.db import transaction
from django.utils import timezone

from core.errors import InvalidInput, NotFound
from core.models import Organization
from payments.common import _stripe_message
from payments.models import PaymentMethodChange, StripeCustomer
from payments.stripe_client import as_dict, is_transient, object_id, stripe_client, unavailable

# Stripe answers at most 100 a page; a customer with more saved cards than that is
# not a person at a checkout, and the page says that more exist.
LIST_LIMIT = 100


@dataclass(frozen=True, slots=True)
class SavedCard:
    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool


@dataclass(frozen=True, slots=True)
class SavedCards:
    cards: list[SavedCard]
    has_more: bool
    default_payment_method: str


def payment_methods_list(*, organization: Organization) -> SavedCards:
    """The cards saved on the org's Stripe customer (none before it has one), the
    default first. A read of Stripe; nothing is written."""
    customer = StripeCustomer.objects.filter(organization=organization).first()
    if customer is None:
        return SavedCards([], False, "")
    client = stripe_client()
    try:
        found = client.v1.payment_methods.list(
            params={"customer": customer.customer_id, "type": "card", "limit": LIST_LIMIT}
        )
    except stripe.StripeError as exc:
        raise unavailable(exc) from exc
    cards = [_card(as_dict(pm), customer.default_payment_method) for pm in found.data]
    cards.sort(key=lambda card: not card.is_default)
    return SavedCards(cards, bool(found.has_more), customer.default_payment_method)


def _card(fields: dict[str, Any], default: str) -> SavedCard:
    card = fields.get("card") or {}
    return SavedCard(
        payment_method_id=str(fields["id"]),
        brand=str(card.get("brand") or "card"),
        last4=str(card.get("last4") or ""),
        exp_month=int(card.get("exp_month") or 0),
        exp_year=int(card.get("exp_year") or 0),
        is_default=fields["id"] == default,
    )


def _customer_of(organization: Organization) -> StripeCustomer:
    customer = StripeCustomer.objects.filter(organization=organization).first()
    if customer is None:
        raise NotFound(
            "your organization has no saved payment methods yet",
            details={"field": "payment_method"},
        )
    return customer


def _check_owned(customer: StripeCustomer, payment_method_id: str) -> None:
    """The method must be one of this customer's: another organization's card id is
    as good as absent (404), whatever Stripe would do with it."""
    if not payment_method_id.startswith("pm_"):
        raise InvalidInput(
            "payment_method must be a Stripe payment method id (pm_…)",
            details={"field": "payment_method"},
        )
    try:
        found = stripe_client().v1.payment_methods.retrieve(payment_method_id)
    except stripe.InvalidRequestError as exc:
        if getattr(exc, "http_status", None) == 404:
            found = None
        else:
            raise InvalidInput(
                f"payment_method: {_stripe_message(exc)}", details={"field": "payment_method"}
            ) from exc
    except stripe.StripeError as exc:
        raise unavailable(exc) from exc
    if found is None or object_id(as_dict(found).get("customer")) != customer.customer_id:
        raise NotFound(
            f"no saved payment method {payment_method_id} in your organization",
            details={"field": "payment_method"},
        )


def _intend(
    organization: Organization, action: str, payment_method_id: str, actor: str
) -> PaymentMethodChange:
    with transaction.atomic():
        return PaymentMethodChange.objects.create(
            organization=organization,
            action=action,
            payment_method_id=payment_method_id,
            requested_by=actor,
        )


def _record_failure(change: PaymentMethodChange, exc: stripe.StripeError) -> None:
    PaymentMethodChange.objects.filter(pk=change.pk, status="pending").update(
        status=PaymentMethodChange.Status.FAILED,
        failure_message=_stripe_message(exc)[:1000],
        completed_at=timezone.now(),
    )


def _send(change: PaymentMethodChange, call: Any) -> None:
    """Call Stripe for ``change``; a refusal is recorded on the row and raised as
    the caller's error (503 when Stripe may answer a retry, 400 else)."""
    try:
        call({"idempotency_key": f"tandem-pm-change-{change.pk}"})
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc  # left pending: the same row may be retried
        _record_failure(change, exc)
        raise InvalidInput(
            f"payment_method: {_stripe_message(exc)}", details={"field": "payment_method"}
        ) from exc


def payment_method_make_default(
    *, organization: Organization, payment_method_id: str, actor: str
) -> PaymentMethodChange:
    """Make one of the org's saved cards the one charged off-session (auto-recharge,
    invoice collection), on Stripe's customer and on ours."""
    customer = _customer_of(organization)
    _check_owned(customer, payment_method_id)
    change = _intend(
        organization, PaymentMethodChange.Action.MAKE_DEFAULT, payment_method_id, actor
    )
    client = stripe_client()
    _send(
        change,
        lambda options: client.v1.customers.update(
            customer.customer_id,
            params={"invoice_settings": {"default_payment_method": payment_method_id}},
            options=options,
        ),
    )
    with transaction.atomic():
        StripeCustomer.objects.filter(pk=customer.pk).update(
            default_payment_method=payment_method_id, updated_at=timezone.now()
        )
        PaymentMethodChange.objects.filter(pk=change.pk).update(
            status=PaymentMethodChange.Status.SUCCEEDED, completed_at=timezone.now()
        )
    change.refresh_from_db()
    return change


def payment_method_remove(
    *, organization: Organization, payment_method_id: str, actor: str
) -> PaymentMethodChange:
    """Detach a saved card from the org's customer. When it was the default, nothing
    is charged off-session until another is made the default (auto-recharge and
    collection skip a customer without one)."""
    customer = _customer_of(organization)
    _check_owned(customer, payment_method_id)
    change = _intend(organization, PaymentMethodChange.Action.REMOVE, payment_method_id, actor)
    client = stripe_client()
    _send(
        change,
        lambda options: client.v1.payment_methods.detach(payment_method_id, options=options),
    )
    with transaction.atomic():
        StripeCustomer.objects.filter(
            pk=customer.pk, default_payment_method=payment_method_id
        ).update(default_payment_method="", updated_at=timezone.now())
        PaymentMethodChange.objects.filter(pk=change.pk).update(
            status=PaymentMethodChange.Status.SUCCEEDED, completed_at=timezone.now()
        )
    change.refresh_from_db()
    return change
