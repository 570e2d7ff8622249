"""Top-ups of prepaid credit: recording one, sending it to Stripe (a PaymentIntent, or
Stripe's hosted Checkout), crediting what Stripe collected once its webhook confirms,
and resending saved-method top-ups that never reached Stripe."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from core.db import retry_transaction
from core.errors import IdempotencyConflict, InvalidInput
from core.models import Organization
from core.queue import task_send_on_commit
from ledger import services as ledger
from ledger.models import Account
from payments import events as pev
from payments.common import (
    ACTOR,
    STRIPE_EVENT_PROCESS_TASK,
    _account,
    _announce,
    _clearing,
    _stripe_message,
)
from payments.customers import customer_ensure
from payments.models import StripeCustomer, StripeEvent, TopUp
from payments.stripe_client import (
    PaymentFailed,
    from_minor,
    is_transient,
    ledger_currency,
    object_id,
    stripe_client,
    stripe_currency,
    to_minor,
    unavailable,
)

logger = logging.getLogger(__name__)

# --- top-ups ------------------------------------------------------------------------


def top_up_check_amount(*, amount_micros: int, currency: str, field: str = "amount") -> None:
    low, high = settings.TOPUP_MINIMUM_MICROS, settings.TOPUP_MAXIMUM_MICROS
    if not low <= amount_micros <= high:
        raise InvalidInput(
            f"{field} must be from {low / 1_000_000:.2f} to {high / 1_000_000:.2f} {currency}",
            details={"field": field, "minimum_micros": low, "maximum_micros": high},
        )
    to_minor(amount_micros, currency, field=field)


@retry_transaction
def top_up_record(
    *,
    organization: Organization,
    amount_micros: int,
    currency: str,
    source: str,
    request_key: str,
) -> TopUp:
    """The top-up row for this request key, created once: a retried request (or a
    claim taken over after a crash) finds the same row, and so the same
    PaymentIntent through Stripe's idempotency key."""
    if not organization.is_buyer:
        raise InvalidInput(f"{organization.name} is not a buyer organization")
    top_up, created = TopUp.objects.get_or_create(
        organization=organization,
        request_key=request_key,
        defaults={"amount_micros": amount_micros, "currency": currency, "source": source},
    )
    if not created and (top_up.amount_micros, top_up.source) != (amount_micros, source):
        raise IdempotencyConflict(
            f"request key {request_key!r} was used for another top-up",
            details={"top_up": top_up.pk},
        )
    return top_up


@dataclass(frozen=True, slots=True)
class TopUpStarted:
    top_up: TopUp
    client_secret: str = ""


def _intent_params(top_up: TopUp, customer: StripeCustomer) -> dict[str, Any]:
    params: dict[str, Any] = {
        "amount": to_minor(top_up.amount_micros, top_up.currency),
        "currency": stripe_currency(top_up.currency),
        "customer": customer.customer_id,
        "payment_method_types": ["card"],
        "metadata": {
            "tandem_top_up": str(top_up.pk),
            "tandem_organization": str(top_up.organization_id),
        },
    }
    if top_up.source in (TopUp.Source.SAVED_METHOD, TopUp.Source.AUTO_RECHARGE):
        params.update(
            payment_method=customer.default_payment_method, confirm=True, off_session=True
        )
    return params


def top_up_submit(*, top_up: TopUp) -> TopUpStarted:
    """Create the top-up's PaymentIntent (or find it again) and record it.

    Nothing is credited here, whatever the PaymentIntent says: credit follows
    ``payment_intent.succeeded`` only."""
    client = stripe_client()
    if top_up.payment_intent_id:
        try:
            intent = client.v1.payment_intents.retrieve(top_up.payment_intent_id)
        except stripe.StripeError as exc:
            raise unavailable(exc) from exc
        return TopUpStarted(top_up, intent.client_secret or "")
    customer = customer_ensure(organization=top_up.organization)
    if top_up.source != TopUp.Source.PAYMENT_ELEMENT and not customer.default_payment_method:
        top_up_mark(top_up_id=top_up.pk, status=TopUp.Status.FAILED, message="no saved method")
        raise InvalidInput(
            "no saved payment method: save one first (POST /api/v1/billing/payment-methods)",
            details={"field": "use_saved_method"},
        )
    TopUp.objects.filter(pk=top_up.pk).update(attempts=F("attempts") + 1)
    try:
        intent = client.v1.payment_intents.create(
            params=_intent_params(top_up, customer),  # type: ignore[arg-type]
            options={"idempotency_key": f"tandem-topup-{top_up.pk}"},
        )
    except stripe.CardError as exc:
        # The PaymentIntent exists and failed: record it; the webhook says the same.
        failed = getattr(getattr(exc, "error", None), "payment_intent", None)
        top_up_mark(
            top_up_id=top_up.pk,
            status=TopUp.Status.FAILED,
            message=_stripe_message(exc),
            payment_intent_id=object_id(failed) or None,
        )
        raise PaymentFailed(_stripe_message(exc), details={"top_up": top_up.pk}) from exc
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        top_up_mark(top_up_id=top_up.pk, status=TopUp.Status.FAILED, message=_stripe_message(exc))
        raise InvalidInput(_stripe_message(exc), details={"top_up": top_up.pk}) from exc
    status = {
        "processing": TopUp.Status.PROCESSING,
        "succeeded": TopUp.Status.PROCESSING,  # credited when the webhook confirms
        "canceled": TopUp.Status.CANCELED,
    }.get(intent.status, TopUp.Status.REQUIRES_PAYMENT)
    top_up_mark(top_up_id=top_up.pk, status=status, payment_intent_id=intent.id)
    top_up.refresh_from_db()
    return TopUpStarted(top_up, intent.client_secret or "")


@retry_transaction
def top_up_mark(
    *, top_up_id: int, status: str, message: str = "", payment_intent_id: str | None = None
) -> None:
    """Move a top-up's status forward; a succeeded top-up never moves back."""
    top_up = TopUp.objects.select_for_update().get(pk=top_up_id)
    if payment_intent_id and not top_up.payment_intent_id:
        top_up.payment_intent_id = payment_intent_id
    if top_up.status != TopUp.Status.SUCCEEDED:
        top_up.status = status
        top_up.failure_message = message[:500]
    top_up.save()


def checkout_session_create(*, top_up: TopUp, success_url: str, cancel_url: str) -> TopUp:
    """Stripe's hosted Checkout page for a top-up; credit follows the webhook, as
    with the Payment Element."""
    if top_up.checkout_session_id:
        return top_up
    customer = customer_ensure(organization=top_up.organization)
    client = stripe_client()
    metadata = {
        "tandem_top_up": str(top_up.pk),
        "tandem_organization": str(top_up.organization_id),
    }
    TopUp.objects.filter(pk=top_up.pk).update(attempts=F("attempts") + 1)
    try:
        session = client.v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "customer": customer.customer_id,
                "client_reference_id": str(top_up.pk),
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": stripe_currency(top_up.currency),
                            "unit_amount": to_minor(top_up.amount_micros, top_up.currency),
                            "product_data": {"name": "Tandem prepaid credits"},
                        },
                    }
                ],
                "payment_intent_data": {"metadata": metadata},
                "metadata": metadata,
                "success_url": success_url,
                "cancel_url": cancel_url,
            },
            options={"idempotency_key": f"tandem-topup-{top_up.pk}"},
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        top_up_mark(top_up_id=top_up.pk, status=TopUp.Status.FAILED, message=_stripe_message(exc))
        raise InvalidInput(_stripe_message(exc), details={"top_up": top_up.pk}) from exc
    TopUp.objects.filter(pk=top_up.pk).update(
        checkout_session_id=session.id,
        checkout_url=session.url or "",
        status=TopUp.Status.REQUIRES_PAYMENT,
    )
    top_up.refresh_from_db()
    return top_up


def _wake_waiting(top_up_id: int) -> None:
    """Send again, after this commit, the events that waited for this top-up."""
    waiting = list(
        StripeEvent.objects.filter(waiting_for_id=top_up_id, processed_at__isnull=True)
        .order_by("pk")
        .values_list("event_id", flat=True)
    )
    for event_id in waiting:
        task_send_on_commit(STRIPE_EVENT_PROCESS_TASK, event_id)


def _find_top_up(metadata: Any, payment_intent_id: str = "", charge_id: str = "") -> TopUp | None:
    query = TopUp.objects.select_for_update()
    raw = (metadata or {}).get("tandem_top_up")
    if raw and str(raw).isdigit():
        found = query.filter(pk=int(raw)).first()
        if found is not None:
            return found
    if payment_intent_id:
        found = query.filter(payment_intent_id=payment_intent_id).first()
        if found is not None:
            return found
    if charge_id:
        return query.filter(charge_id=charge_id).first()
    return None


def _top_up_credit(
    top_up: TopUp, *, amount_minor: int, currency: str, intent_id: str, charge_id: str
) -> str:
    """Grant the credit Stripe collected, once (the caller holds the row lock)."""
    if top_up.status == TopUp.Status.SUCCEEDED:
        return f"top-up {top_up.pk} was credited already"
    currency = ledger_currency(currency)
    if currency != top_up.currency:
        logger.error("top-up %s paid in %s, not %s", top_up.pk, currency, top_up.currency)
        return f"top-up {top_up.pk}: paid in {currency}, not {top_up.currency}; not credited"
    amount = from_minor(amount_minor, currency)
    credit = _account(top_up.organization, Account.Kind.CREDIT, currency)
    result = ledger.transfer_create(
        transfer_id=top_up.transfer_id,
        debit_account_id=_clearing(currency).pk,
        credit_account_id=credit.pk,
        amount_micros=amount,
        currency=currency,
        kind="top_up",
        description=f"top-up {top_up.pk} paid by card ({intent_id})",
        actor=ACTOR,
    )
    top_up.status = TopUp.Status.SUCCEEDED
    top_up.credited_micros = amount
    top_up.succeeded_at = timezone.now()
    top_up.failure_message = ""
    top_up.payment_intent_id = top_up.payment_intent_id or intent_id or None
    top_up.charge_id = charge_id or top_up.charge_id
    top_up.save()
    _wake_waiting(top_up.pk)
    if result.status == "posted":
        _announce(
            pev.top_up_stream(top_up.pk),
            pev.TOP_UP_CREDITED,
            pev.TopUpCredited(
                organization=top_up.organization_id,
                top_up=top_up.pk,
                amount_micros=amount,
                currency=currency,
                payment_intent=intent_id,
            ),
            tenant_id=top_up.organization_id,
        )
    return f"top-up {top_up.pk} credited {amount} micros"


@retry_transaction
def top_up_apply_payment_intent(*, intent: dict[str, Any], event_type: str) -> str:
    """Bring a top-up in line with its PaymentIntent. Order-free: success is final
    and wins over any failure or cancellation delivered before or after it."""
    intent_id = str(intent.get("id") or "")
    top_up = _find_top_up(intent.get("metadata"), payment_intent_id=intent_id)
    if top_up is None:
        return f"payment intent {intent_id} is not a Tandem top-up"
    if not top_up.payment_intent_id:
        top_up.payment_intent_id = intent_id
        top_up.save(update_fields=["payment_intent_id", "updated_at"])
    status = intent.get("status")
    if status == "succeeded":
        received = intent.get("amount_received") or intent.get("amount") or 0
        return _top_up_credit(
            top_up,
            amount_minor=int(received),
            currency=str(intent.get("currency", "")),
            intent_id=intent_id,
            charge_id=object_id(intent.get("latest_charge")),
        )
    if top_up.status == TopUp.Status.SUCCEEDED:
        return f"top-up {top_up.pk} succeeded already; {event_type} changes nothing"
    if status == "canceled":
        top_up.status = TopUp.Status.CANCELED
    elif event_type == "payment_intent.payment_failed":
        top_up.status = TopUp.Status.FAILED
        error = intent.get("last_payment_error") or {}
        top_up.failure_message = str(error.get("message") or "payment failed")[:500]
    elif status == "processing":
        top_up.status = TopUp.Status.PROCESSING
    top_up.save()
    return f"top-up {top_up.pk} is {top_up.status}"


@retry_transaction
def top_up_apply_checkout_session(*, session: dict[str, Any], event_type: str) -> str:
    top_up = _find_top_up(session.get("metadata"))
    if top_up is None and str(session.get("client_reference_id") or "").isdigit():
        top_up = (
            TopUp.objects.select_for_update().filter(pk=int(session["client_reference_id"])).first()
        )
    if top_up is None:
        return f"checkout session {session.get('id')} is not a Tandem top-up"
    if event_type == "checkout.session.expired":
        if top_up.status != TopUp.Status.SUCCEEDED:
            top_up.status = TopUp.Status.CANCELED
            top_up.save()
        return f"top-up {top_up.pk} is {top_up.status}"
    if session.get("payment_status") != "paid":
        return f"checkout session {session.get('id')} is not paid yet"
    return _top_up_credit(
        top_up,
        amount_minor=int(session.get("amount_total") or 0),
        currency=str(session.get("currency", "")),
        intent_id=object_id(session.get("payment_intent")),
        charge_id="",
    )


def top_ups_resume(*, older_than: timedelta = timedelta(minutes=1)) -> int:
    """Send saved-method top-ups (auto-recharge) still unsent to Stripe: a crash
    after the follower committed, or Stripe was down. Same idempotency key."""
    due = TopUp.objects.filter(
        status=TopUp.Status.PENDING,
        source__in=[TopUp.Source.AUTO_RECHARGE],
        created_at__lte=timezone.now() - older_than,
    ).order_by("pk")
    sent = 0
    for top_up in due:
        try:
            top_up_submit(top_up=top_up)
            sent += 1
        except (PaymentFailed, InvalidInput):
            sent += 1  # recorded as failed
        except Exception:  # a transient Stripe error: next sweep
            logger.exception("top-up %s: Stripe did not answer", top_up.pk)
    return sent
