"""One collection attempt of an invoice: sent to Stripe as an off-session
PaymentIntent on the buyer's saved method, and Stripe's answers recorded — success
marks the invoice paid (once), a failure moves the dunning on. The schedule and the
three steps of an attempt are described at the top of ``payments/collection.py``."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import stripe
from django.db.models import F
from django.utils import timezone

from core.db import retry_transaction
from invoicing.models import Invoice
from invoicing.services import invoice_mark_paid, invoice_mark_past_due, invoice_mark_uncollectible
from ledger import services as ledger
from ledger.models import Account
from payments import events as pev
from payments.collection import (
    ACTOR,
    RESOLVED,
    _announce,
    _saved_method,
    _settled_status,
    collectible_micros,
    retry_days,
)
from payments.models import InvoiceCollection, InvoicePayment, StripeCustomer
from payments.stripe_client import (
    as_dict,
    from_minor,
    is_transient,
    ledger_currency,
    object_id,
    stripe_client,
    stripe_currency,
)

logger = logging.getLogger(__name__)

# --- sending an attempt to Stripe ----------------------------------------------------------


def charge_minor(amount_micros: int, currency: str) -> int:
    """What to charge, in Stripe's minor units, for ``amount_micros`` owed: rounded up
    to a whole cent. An invoice owes whole cents, unless prepaid credit paid part of
    it to the micro-unit; the fraction of a cent charged beyond it is then given back
    as prepaid credit (the excess of the payment)."""
    step = from_minor(1, currency)
    return -(-amount_micros // step)


def _intent_params(payment: InvoicePayment, customer: StripeCustomer) -> dict[str, Any]:
    # No ``description``: the metadata names the invoice (and the fake Stripe of the
    # tests refuses the field).
    return {
        "amount": charge_minor(payment.amount_micros, payment.currency),
        "currency": stripe_currency(payment.currency),
        "customer": customer.customer_id,
        "payment_method": customer.default_payment_method,
        "payment_method_types": ["card"],
        "confirm": True,
        "off_session": True,
        "metadata": {
            "tandem_invoice": str(payment.invoice_id),
            "tandem_invoice_number": payment.invoice.number or "",
            "tandem_invoice_payment": str(payment.pk),
            "tandem_attempt": str(payment.attempt),
            "tandem_organization": str(payment.organization_id),
        },
    }


def _message(exc: stripe.StripeError) -> str:
    return str(getattr(exc, "user_message", None) or exc)[:500]


def invoice_payment_submit(*, payment_id: int, now: datetime | None = None) -> InvoicePayment:
    """Create and confirm the attempt's off-session PaymentIntent and record the
    answer. Outside any transaction. A decline is recorded as a failure (and the
    dunning moves on); Stripe not answering leaves the attempt pending for the next
    ``invoice_dunning_run``, which sends it again with the same idempotency key."""
    now = now or timezone.now()
    payment = InvoicePayment.objects.select_related("invoice").get(pk=payment_id)
    if payment.status != InvoicePayment.Status.PENDING:
        return payment
    if collectible_micros(payment.invoice) <= 0:
        invoice_payment_cancel(payment_id=payment.pk, now=now)
        return InvoicePayment.objects.get(pk=payment_id)
    customer = _saved_method(payment.organization_id)
    if customer is None:
        invoice_payment_record_failure(
            payment_id=payment.pk,
            code="no_payment_method",
            message="no saved payment method",
            now=now,
        )
        return InvoicePayment.objects.get(pk=payment_id)
    client = stripe_client()
    InvoicePayment.objects.filter(pk=payment.pk).update(sends=F("sends") + 1, submitted_at=now)
    try:
        intent = client.v1.payment_intents.create(
            params=_intent_params(payment, customer),  # type: ignore[arg-type]
            options={"idempotency_key": payment.idempotency_key},
        )
    except stripe.CardError as exc:
        error = getattr(exc, "error", None)
        invoice_payment_record_failure(
            payment_id=payment.pk,
            code=str(getattr(exc, "code", None) or "card_declined"),
            message=_message(exc),
            payment_intent_id=object_id(getattr(error, "payment_intent", None)),
            now=now,
        )
        return InvoicePayment.objects.get(pk=payment_id)
    except stripe.StripeError as exc:
        if is_transient(exc):
            InvoicePayment.objects.filter(pk=payment.pk).update(last_error=_message(exc))
            return InvoicePayment.objects.get(pk=payment_id)
        invoice_payment_record_failure(
            payment_id=payment.pk,
            code=str(getattr(exc, "code", None) or "stripe_error"),
            message=_message(exc),
            now=now,
        )
        return InvoicePayment.objects.get(pk=payment_id)
    answer = as_dict(intent)
    if answer.get("status") in ("succeeded", "processing"):
        # Paid only on Stripe's payment_intent.succeeded (or a re-read of the
        # PaymentIntent when that is late), as top-ups are credited.
        InvoicePayment.objects.filter(pk=payment.pk, status=InvoicePayment.Status.PENDING).update(
            status=InvoicePayment.Status.PROCESSING, payment_intent_id=intent.id, last_error=""
        )
    else:
        invoice_payment_apply_intent(intent=answer, event_type="", now=now)
    return InvoicePayment.objects.get(pk=payment_id)


# --- recording Stripe's answers --------------------------------------------------------------


def _find_payment(intent: dict[str, Any]) -> InvoicePayment | None:
    rows = InvoicePayment.objects.select_for_update()
    raw = (intent.get("metadata") or {}).get("tandem_invoice_payment")
    if raw and str(raw).isdigit():
        found = rows.filter(pk=int(raw)).first()
        if found is not None:
            return found
    intent_id = str(intent.get("id") or "")
    if intent_id:
        return rows.filter(payment_intent_id=intent_id).first()
    return None


def is_invoice_payment(intent: dict[str, Any]) -> bool:
    """Whether a PaymentIntent is one of ours for an invoice (else: a top-up's)."""
    raw = (intent.get("metadata") or {}).get("tandem_invoice_payment")
    if raw:
        return True
    intent_id = str(intent.get("id") or "")
    return bool(intent_id) and InvoicePayment.objects.filter(payment_intent_id=intent_id).exists()


@retry_transaction
def invoice_payment_apply_intent(
    *, intent: dict[str, Any], event_type: str, now: datetime | None = None
) -> str:
    """Bring an attempt in line with its PaymentIntent (a webhook, the answer to the
    create call, or a re-read). Order-free: success is final and wins over any
    failure delivered before or after it; each outcome takes effect once."""
    now = now or timezone.now()
    payment = _find_payment(intent)
    intent_id = str(intent.get("id") or "")
    if payment is None:
        return f"payment intent {intent_id} is not a Tandem invoice payment"
    if intent_id and not payment.payment_intent_id:
        payment.payment_intent_id = intent_id
        payment.save(update_fields=["payment_intent_id"])
    status = str(intent.get("status") or "")
    if status == "succeeded":
        return _payment_succeeded(payment, intent, now)
    if payment.status in RESOLVED:
        return f"attempt {payment.attempt} on invoice {payment.invoice_id} is {payment.status}"
    error = intent.get("last_payment_error") or {}
    if (
        event_type == "payment_intent.payment_failed"
        or status == "canceled"
        or (status == "requires_payment_method" and error)
    ):
        return _payment_failed(
            payment,
            code=str(error.get("decline_code") or error.get("code") or status or "payment_failed"),
            message=str(error.get("message") or f"the payment was {status or 'declined'}"),
            now=now,
        )
    if status == "requires_action":
        # Off-session, the buyer is not there to authenticate: a failure, as Stripe
        # itself answers with authentication_required.
        return _payment_failed(
            payment,
            code="authentication_required",
            message="the card needs the cardholder to authenticate the payment",
            now=now,
        )
    if payment.status == InvoicePayment.Status.PENDING:
        payment.status = InvoicePayment.Status.PROCESSING
        payment.last_error = ""
        payment.save(update_fields=["status", "last_error"])
    return f"attempt {payment.attempt} on invoice {payment.invoice_id} is {payment.status}"


def _payment_succeeded(payment: InvoicePayment, intent: dict[str, Any], now: datetime) -> str:
    """Mark the invoice paid with what Stripe collected (the caller holds the
    attempt's lock, so this runs once per attempt)."""
    if payment.status == InvoicePayment.Status.SUCCEEDED:
        return f"attempt {payment.attempt} on invoice {payment.invoice_id} was applied already"
    currency = ledger_currency(str(intent.get("currency") or ""))
    if currency != payment.currency:
        logger.error(
            "invoice payment %s paid in %s, not %s", payment.pk, currency, payment.currency
        )
        return f"attempt {payment.pk}: paid in {currency}, not {payment.currency}; not applied"
    received = from_minor(int(intent.get("amount_received") or intent.get("amount") or 0), currency)
    collection = InvoiceCollection.objects.select_for_update().get(pk=payment.collection_id)
    invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
    intent_id = str(intent.get("id") or payment.payment_intent_id or "")
    owed = collectible_micros(invoice)
    applied = owed if 0 < owed <= received else 0
    if applied:
        invoice = invoice_mark_paid(
            invoice=invoice, payment_reference=intent_id, actor=ACTOR, now=now
        )
    elif owed:
        # Less than the invoice owes (it charged what was owed, so never in practice):
        # the money is the buyer's; the invoice waits for finance.
        logger.error("invoice payment %s: %s received of %s owed", payment.pk, received, owed)
    excess = received - applied
    if excess:
        ledger.transfer_create(
            transfer_id=f"invoice-payment:{payment.pk}:excess",
            debit_account_id=ledger.platform_account(
                kind=Account.Kind.STRIPE_CLEARING, currency=currency
            ).pk,
            credit_account_id=ledger.account_open(
                organization=invoice.organization, kind=Account.Kind.CREDIT, currency=currency
            ).pk,
            amount_micros=excess,
            currency=currency,
            kind="invoice_overpayment",
            description=f"payment {intent_id} on invoice {invoice.number}: not owed any more",
            actor=ACTOR,
        )
    payment.status = InvoicePayment.Status.SUCCEEDED
    payment.received_micros = received
    payment.excess_micros = excess
    payment.charge_id = object_id(intent.get("latest_charge")) or payment.charge_id
    payment.failure_code = payment.failure_message = payment.last_error = ""
    payment.resolved_at = now
    payment.save()
    collection.status = _settled_status(invoice)
    collection.next_retry_at = None
    collection.save()
    _announce(
        invoice.pk,
        pev.INVOICE_PAYMENT_SUCCEEDED,
        pev.InvoicePaymentSucceeded(
            organization=invoice.organization_id,
            invoice=invoice.pk,
            number=invoice.number or "",
            payment=payment.pk,
            attempt=payment.attempt,
            amount_micros=received,
            excess_micros=excess,
            currency=currency,
            payment_intent=intent_id,
        ),
        tenant_id=invoice.organization_id,
    )
    return f"invoice {invoice.number} paid by attempt {payment.attempt} ({received} micros)"


@retry_transaction
def invoice_payment_record_failure(
    *,
    payment_id: int,
    code: str,
    message: str,
    payment_intent_id: str = "",
    now: datetime | None = None,
) -> str:
    """A declined or refused attempt (the answer to the create call)."""
    now = now or timezone.now()
    payment = InvoicePayment.objects.select_for_update().get(pk=payment_id)
    if payment_intent_id and not payment.payment_intent_id:
        payment.payment_intent_id = payment_intent_id
        payment.save(update_fields=["payment_intent_id"])
    if payment.status in RESOLVED:
        return f"attempt {payment.attempt} on invoice {payment.invoice_id} is {payment.status}"
    return _payment_failed(payment, code=code, message=message, now=now)


@retry_transaction
def invoice_payment_cancel(*, payment_id: int, now: datetime | None = None) -> str:
    """An attempt not sent because the invoice owes nothing any more."""
    now = now or timezone.now()
    payment = InvoicePayment.objects.select_for_update().get(pk=payment_id)
    if payment.status != InvoicePayment.Status.PENDING:
        return f"attempt {payment.attempt} is {payment.status}"
    collection = InvoiceCollection.objects.select_for_update().get(pk=payment.collection_id)
    invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
    if collectible_micros(invoice) > 0:
        return f"invoice {invoice.number} still owes: attempt {payment.attempt} stays"
    payment.status = InvoicePayment.Status.CANCELED
    payment.resolved_at = now
    payment.save()
    collection.status = _settled_status(invoice)
    collection.next_retry_at = None
    collection.save()
    return f"attempt {payment.attempt} canceled: invoice {invoice.number} is {invoice.status}"


def _payment_failed(payment: InvoicePayment, *, code: str, message: str, now: datetime) -> str:
    """Record a failed attempt and take the dunning one step on (the caller holds the
    attempt's lock)."""
    payment.status = InvoicePayment.Status.FAILED
    payment.failure_code = code[:100]
    payment.failure_message = message[:500]
    payment.resolved_at = now
    payment.save()
    collection = InvoiceCollection.objects.select_for_update().get(pk=payment.collection_id)
    invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
    _announce(
        invoice.pk,
        pev.INVOICE_PAYMENT_FAILED,
        pev.InvoicePaymentFailed(
            organization=invoice.organization_id,
            invoice=invoice.pk,
            number=invoice.number or "",
            payment=payment.pk,
            attempt=payment.attempt,
            failure_code=payment.failure_code,
            failure_message=payment.failure_message,
            payment_intent=payment.payment_intent_id or "",
        ),
        tenant_id=invoice.organization_id,
    )
    if collectible_micros(invoice) <= 0:
        collection.status = _settled_status(invoice)
        collection.next_retry_at = None
        collection.save()
        return f"attempt {payment.attempt} failed; invoice {invoice.number} owes nothing now"
    if invoice.status == Invoice.Status.OPEN:
        invoice = invoice_mark_past_due(invoice=invoice, actor=ACTOR, now=now)
    if collection.first_failed_at is None:
        collection.first_failed_at = now
    days = retry_days()
    next_at: datetime | None
    if payment.trigger == InvoicePayment.Trigger.MANUAL and collection.next_retry_at is not None:
        next_at = collection.next_retry_at  # the schedule carries on where it was
    elif collection.retries_done < len(days):
        next_at = collection.first_failed_at + timedelta(days=days[collection.retries_done])
    else:
        next_at = None
    amount_due = collectible_micros(invoice)
    if next_at is not None:
        collection.status = InvoiceCollection.Status.RETRY_SCHEDULED
        collection.next_retry_at = next_at
    else:
        invoice = invoice_mark_uncollectible(
            invoice=invoice,
            reason=f"payment failed {collection.attempts} times ({payment.failure_code})",
            actor=ACTOR,
            now=now,
        )
        collection.status = InvoiceCollection.Status.UNCOLLECTIBLE
        collection.next_retry_at = None
    collection.save()
    _announce(
        invoice.pk,
        pev.INVOICE_PAYMENT_REMINDER_SENT,
        pev.InvoicePaymentReminderSent(
            organization=invoice.organization_id,
            invoice=invoice.pk,
            number=invoice.number or "",
            attempt=payment.attempt,
            amount_due_micros=amount_due,
            currency=invoice.currency,
            failure_message=payment.failure_message,
            next_retry_at=next_at.isoformat() if next_at else None,
            final=next_at is None,
        ),
        tenant_id=invoice.organization_id,
    )
    if next_at is None:
        return f"attempt {payment.attempt} failed; invoice {invoice.number} is uncollectible"
    return f"attempt {payment.attempt} failed; next try at {next_at.isoformat()}"
