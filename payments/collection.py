"""Collecting finalized invoices from the buyer's saved payment method, and dunning.

Who is charged: every finalized invoice that leaves an amount owed, of a buyer with a
saved payment method. For postpaid buyers (``pricing.terms``: usage debits the
receivable) that is every invoice. A prepaid buyer's invoice normally owes nothing —
prepaid credit paid the usage and it is finalized ``paid`` — but when credit ran out
and the rest went to the receivable, that rest is owed on the same footing, so it is
collected the same way when a method is saved. With no saved method nothing is
charged: ``InvoiceCollectionSkipped`` says so, the invoice stays open for payment by
other means (bank transfer, marked paid by finance), and finance can start a
collection later (a retry) once a method is saved. Never charging without a saved
method also means no buyer is written off for lacking a card.

The schedule (``settings.DUNNING_RETRY_DAYS``, default 1, 3, 5, 7):

- attempt 1 when the invoice is finalized (the follower below);
- when it fails, at T: the invoice is ``past_due`` at once (the charge was its
  payment: an invoice charged automatically is late when its charge fails, as
  Stripe's subscriptions are), and a reminder names the next try, T + 1 day;
- a retry at T + each day of the schedule, each failure another reminder;
- when the retry at T + the last day fails: the invoice is ``uncollectible`` (billing
  writes the receivable off to adjustments) and the reminder is the final notice.

A retry finance asks for is an extra attempt: it uses up no scheduled retry, and if it
fails the schedule carries on where it was. Reminders are events
(``InvoicePaymentReminderSent``): the dunning emails follow them, never the tables.

Each attempt goes in three steps, and Stripe is never called inside a transaction:
record the attempt (``pending``, with the claim that started it), create and confirm
the off-session PaymentIntent (idempotency key ``tandem-invoice-<id>-attempt-<n>``,
metadata naming the invoice and the attempt), record Stripe's answer. A crash
between the steps leaves a pending attempt that ``invoice_dunning_run`` sends again
with the same key, so Stripe answers with the PaymentIntent it already has.

Only ``payment_intent.succeeded`` marks an invoice paid (``invoice_mark_paid``:
Stripe clearing debited, the receivable credited, ``invoice:<key>:paid``), once, in
any order and however often it arrives: the attempt row is locked and success is
final. What Stripe collected beyond what the invoice still owed by then (a credit note
or another payment came first, it was voided, or written off before a late success)
is given to the buyer as prepaid credit (``invoice-payment:<id>:excess``), so Stripe
clearing stays what Stripe holds (there is no refund of such a surplus to the card
here yet: the buyer spends it as credit).

Refunds of invoice payments: finance's go through a credit note (``InvoiceRefund``);
ones made in Stripe's dashboard are clawed back as top-up refunds are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from core.db import retry_transaction
from core.errors import Conflict, InvalidInput
from core.eventstore import NewEvent, RecordedEvent, event_append, stream_version
from core.followers import Follower, register
from core.queue import task_send_on_commit
from invoicing.events import INVOICE_FINALIZED, INVOICE_STREAM
from invoicing.models import Invoice
from invoicing.selectors import outstanding
from invoicing.services import (
    credit_note_issue,
    invoice_mark_paid,
    invoice_mark_past_due,
    invoice_mark_uncollectible,
)
from ledger import services as ledger
from ledger.models import Account
from payments import events as pev
from payments.models import InvoiceCollection, InvoicePayment, InvoiceRefund, StripeCustomer
from payments.services import INVOICE_PAYMENT_SUBMIT_TASK, top_up_claw_back
from payments.stripe_client import (
    as_dict,
    from_minor,
    is_transient,
    ledger_currency,
    object_id,
    stripe_client,
    stripe_configured,
    stripe_currency,
    to_minor,
    unavailable,
)

logger = logging.getLogger(__name__)

ACTOR = "payments"
COLLECTIBLE = (Invoice.Status.OPEN, Invoice.Status.PAST_DUE)
IN_FLIGHT = (InvoicePayment.Status.PENDING, InvoicePayment.Status.PROCESSING)
RESOLVED = (
    InvoicePayment.Status.SUCCEEDED,
    InvoicePayment.Status.FAILED,
    InvoicePayment.Status.CANCELED,
)
# A pending attempt this old was left by a crash or a Stripe outage: sent again.
RESEND_AFTER = timedelta(minutes=1)
# A PaymentIntent this long without its webhook is asked about directly.
REFRESH_AFTER = timedelta(hours=1)


def retry_days() -> list[int]:
    return list(settings.DUNNING_RETRY_DAYS)


def _announce(invoice_id: int, event_type: str, event: Any, *, tenant_id: int) -> None:
    stream_id = pev.invoice_collection_stream(invoice_id)
    event_append(
        stream_type=pev.PAYMENTS_STREAM,
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[NewEvent(event_type, event.payload(), event.schema_version)],
        tenant_id=tenant_id,
        metadata={"actor": ACTOR},
    )


def _saved_method(organization_id: int) -> StripeCustomer | None:
    return StripeCustomer.objects.filter(
        organization_id=organization_id, default_payment_method__gt=""
    ).first()


def collectible_micros(invoice: Invoice) -> int:
    """What collection would charge for ``invoice`` now: what it still owes while it
    is open or past due, else nothing."""
    return outstanding(invoice) if invoice.status in COLLECTIBLE else 0


def _attempt_record(
    *,
    collection: InvoiceCollection,
    invoice: Invoice,
    trigger: str,
    now: datetime,
    requested_by: str = "",
    request_key: str = "",
) -> InvoicePayment:
    """The next attempt on a locked collection and invoice, and its event."""
    collection.attempts += 1
    collection.status = InvoiceCollection.Status.COLLECTING
    collection.claimed_at = now
    collection.save()
    payment = InvoicePayment.objects.create(
        collection=collection,
        invoice=invoice,
        organization_id=invoice.organization_id,
        attempt=collection.attempts,
        trigger=trigger,
        amount_micros=collectible_micros(invoice),
        currency=invoice.currency,
        requested_by=requested_by[:200],
        request_key=request_key[:200],
        created_at=now,
    )
    _announce(
        invoice.pk,
        pev.INVOICE_PAYMENT_ATTEMPTED,
        pev.InvoicePaymentAttempted(
            organization=invoice.organization_id,
            invoice=invoice.pk,
            number=invoice.number or "",
            payment=payment.pk,
            attempt=payment.attempt,
            trigger=trigger,
            amount_micros=payment.amount_micros,
            currency=payment.currency,
        ),
        tenant_id=invoice.organization_id,
    )
    return payment


def _send_after_commit(payment: InvoicePayment) -> None:

    task_send_on_commit(INVOICE_PAYMENT_SUBMIT_TASK, payment.pk)


# --- starting a collection ------------------------------------------------------------


@retry_transaction
def invoice_collection_start(
    *, invoice: Invoice, now: datetime | None = None
) -> InvoicePayment | None:
    """Record the first attempt on a just-finalized invoice (the follower of
    ``InvoiceFinalized``; its transaction). None when nothing is to be charged: the
    invoice owes nothing, was collected before, the buyer saved no method, or payments
    are not configured here (both told by ``InvoiceCollectionSkipped``)."""
    now = now or timezone.now()
    locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if collectible_micros(locked) <= 0 or InvoiceCollection.objects.filter(invoice=locked).exists():
        return None
    reason = ""
    if not stripe_configured():
        reason = "payments are not configured"  # the embedded default: no Stripe
    elif _saved_method(locked.organization_id) is None:
        reason = "no saved payment method"
    if reason:
        _announce(
            locked.pk,
            pev.INVOICE_COLLECTION_SKIPPED,
            pev.InvoiceCollectionSkipped(
                organization=locked.organization_id,
                invoice=locked.pk,
                number=locked.number or "",
                amount_due_micros=collectible_micros(locked),
                currency=locked.currency,
                reason=reason,
            ),
            tenant_id=locked.organization_id,
        )
        return None
    collection = InvoiceCollection.objects.create(
        invoice=locked, organization_id=locked.organization_id, currency=locked.currency
    )
    payment = _attempt_record(
        collection=collection,
        invoice=locked,
        trigger=InvoicePayment.Trigger.FINALIZED,
        now=now,
    )
    _send_after_commit(payment)
    return payment


@retry_transaction
def _retry_record(
    *, invoice_id: int, actor: str, request_key: str, now: datetime
) -> InvoicePayment:
    found = InvoicePayment.objects.filter(invoice_id=invoice_id, request_key=request_key).first()
    if found is not None:
        return found  # the same request again (a claim taken over after a crash)
    invoice = Invoice.objects.get(pk=invoice_id)
    collection, _ = InvoiceCollection.objects.get_or_create(
        invoice=invoice,
        defaults={"organization_id": invoice.organization_id, "currency": invoice.currency},
    )
    collection = InvoiceCollection.objects.select_for_update().get(pk=collection.pk)
    invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
    name = invoice.number or invoice.key
    if collectible_micros(invoice) <= 0:
        raise Conflict(
            f"invoice {name} is {invoice.status} and owes nothing: there is nothing to collect",
            details={"invoice": invoice.pk, "status": invoice.status},
        )
    if collection.status == InvoiceCollection.Status.COLLECTING and collection.attempts:
        raise Conflict(
            f"an attempt on invoice {name} is in flight: wait for Stripe's answer",
            details={"invoice": invoice.pk},
        )
    if _saved_method(invoice.organization_id) is None:
        raise InvalidInput(
            f"{invoice.organization} has no saved payment method to charge",
            details={"invoice": invoice.pk},
        )
    return _attempt_record(
        collection=collection,
        invoice=invoice,
        trigger=InvoicePayment.Trigger.MANUAL,
        now=now,
        requested_by=actor,
        request_key=request_key,
    )


def invoice_collection_retry(
    *, invoice: Invoice, actor: str, request_key: str, now: datetime | None = None
) -> InvoicePayment:
    """Operator finance: charge the saved method for what the invoice owes, now.
    An extra attempt, outside the schedule; keyed by ``request_key``, so the same
    request twice charges once."""
    now = now or timezone.now()
    stripe_client()  # 503 before anything is recorded
    payment = _retry_record(invoice_id=invoice.pk, actor=actor, request_key=request_key, now=now)
    return invoice_payment_submit(payment_id=payment.pk, now=now)


def _retry_claim(
    *, collection_id: int, due_at: datetime | None, now: datetime
) -> InvoicePayment | None:
    """Claim one due scheduled retry: a conditional update of the collection (0 rows:
    another runner has it, or it was paid meanwhile), then its attempt, in one
    transaction."""
    with transaction.atomic():
        claimed = InvoiceCollection.objects.filter(
            pk=collection_id,
            status=InvoiceCollection.Status.RETRY_SCHEDULED,
            next_retry_at=due_at,
        ).update(
            status=InvoiceCollection.Status.COLLECTING,
            next_retry_at=None,
            retries_done=F("retries_done") + 1,
            claimed_at=now,
            updated_at=now,
        )
        if not claimed:
            return None
        collection = InvoiceCollection.objects.select_for_update().get(pk=collection_id)
        invoice = Invoice.objects.select_for_update().get(pk=collection.invoice_id)
        if collectible_micros(invoice) <= 0:
            collection.status = _settled_status(invoice)
            collection.save()
            return None
        return _attempt_record(
            collection=collection,
            invoice=invoice,
            trigger=InvoicePayment.Trigger.SCHEDULED,
            now=now,
        )


def _settled_status(invoice: Invoice) -> str:
    if invoice.status == Invoice.Status.PAID:
        return InvoiceCollection.Status.PAID
    if invoice.status == Invoice.Status.UNCOLLECTIBLE:
        return InvoiceCollection.Status.UNCOLLECTIBLE
    return InvoiceCollection.Status.CLOSED


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


# --- the dunning run --------------------------------------------------------------------------


@dataclass(slots=True)
class DunningRun:
    started: list[int] = field(default_factory=list)  # attempts started (scheduled retries)
    resent: list[int] = field(default_factory=list)  # pending attempts sent again
    refreshed: list[int] = field(default_factory=list)  # re-read from Stripe
    errors: list[int] = field(default_factory=list)  # attempts Stripe did not answer


def _refresh(payment: InvoicePayment, now: datetime) -> None:
    """Ask Stripe about a PaymentIntent whose webhook has not come (outside any
    transaction) and apply its answer as the webhook would."""
    intent = stripe_client().v1.payment_intents.retrieve(payment.payment_intent_id or "")
    invoice_payment_apply_intent(intent=as_dict(intent), event_type="", now=now)


def invoice_dunning_run(*, now: datetime | None = None, limit: int = 500) -> DunningRun:
    """Run what is due: scheduled retries whose time has come, pending attempts a
    crash or an outage left (sent again under their own idempotency key), and
    PaymentIntents whose webhook is late (re-read from Stripe). Idempotent and
    restartable; two runs at once claim each retry once (a conditional update)."""
    now = now or timezone.now()
    stripe_client()
    run = DunningRun()
    in_flight = InvoicePayment.objects.filter(status=InvoicePayment.Status.PROCESSING)
    stale = in_flight.filter(submitted_at__lte=now - REFRESH_AFTER).exclude(payment_intent_id=None)
    for payment in stale.order_by("pk")[:limit]:
        try:
            _refresh(payment, now)
            run.refreshed.append(payment.pk)
        except stripe.StripeError:
            logger.exception("invoice payment %s: Stripe did not answer", payment.pk)
            run.errors.append(payment.pk)
    left = InvoicePayment.objects.filter(
        status=InvoicePayment.Status.PENDING, created_at__lte=now - RESEND_AFTER
    )
    for payment_id in left.order_by("pk").values_list("pk", flat=True)[:limit]:
        sent = invoice_payment_submit(payment_id=payment_id, now=now)
        (run.errors if sent.status == InvoicePayment.Status.PENDING else run.resent).append(
            payment_id
        )
    due = InvoiceCollection.objects.filter(
        status=InvoiceCollection.Status.RETRY_SCHEDULED, next_retry_at__lte=now
    ).order_by("next_retry_at", "pk")
    for collection_id, due_at in due.values_list("pk", "next_retry_at")[:limit]:
        claimed = _retry_claim(collection_id=collection_id, due_at=due_at, now=now)
        if claimed is None:
            continue
        sent = invoice_payment_submit(payment_id=claimed.pk, now=now)
        run.started.append(claimed.pk)
        if sent.status == InvoicePayment.Status.PENDING:
            run.errors.append(claimed.pk)
    return run


# --- refunds of invoice payments ---------------------------------------------------------------

REFUND_HOLD_TIMEOUT = timedelta(days=7)


class RefundNotReady(Exception):
    """A Stripe refund of an invoice payment whose success is not applied yet
    (delivered out of order): the event fails and is processed again later."""


def invoice_payment_refundable(*, payment: InvoicePayment) -> int:
    """What of a payment may still go back to the card: what paid the invoice, less
    refunds not failed. (What it paid beyond the invoice is the buyer's prepaid
    credit, refunded as credit is.)"""
    if payment.status != InvoicePayment.Status.SUCCEEDED:
        return 0
    refunded = (
        payment.refunds.exclude(status=InvoiceRefund.Status.FAILED).aggregate(
            s=Sum("amount_micros")
        )["s"]
        or 0
    )
    return max(0, payment.received_micros - payment.excess_micros - refunded)


@retry_transaction
def _invoice_refund_reserve(
    *, payment_id: int, amount_micros: int, reason: str, actor: str, request_key: str
) -> InvoiceRefund:
    payment = InvoicePayment.objects.select_for_update().get(pk=payment_id)
    found = payment.refunds.filter(request_key=request_key).first()
    if found is not None:
        return found
    refundable = invoice_payment_refundable(payment=payment)
    if refundable <= 0:
        raise Conflict(
            f"attempt {payment.attempt} on invoice {payment.invoice_id} is {payment.status} "
            "with nothing left to refund",
            details={"payment": payment.pk, "status": payment.status},
        )
    invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
    # The correction first: revenue and tax come down, the total goes to the buyer's
    # prepaid credit (the invoice is paid), from where the card gets it back.
    note = credit_note_issue(
        invoice=invoice,
        amount_micros=amount_micros,
        reason=reason,
        key=f"invoice-refund:{payment.pk}:{request_key}"[:240],
        actor=actor,
    )
    if note.to_credit_micros > refundable or note.to_receivable_micros:
        raise InvalidInput(
            f"amount: {note.total_micros} micros with its tax is more than is left of the "
            f"payment to refund ({refundable} micros)",
            details={"field": "amount", "refundable_micros": refundable},
        )
    refund = InvoiceRefund.objects.create(
        payment=payment,
        invoice=invoice,
        organization_id=payment.organization_id,
        amount_micros=note.total_micros,
        currency=payment.currency,
        credit_note=note.number,
        reason=reason[:500],
        requested_by=actor[:200],
        request_key=request_key[:200],
    )
    ledger.hold_create(
        hold_id=refund.hold_id,
        debit_account_id=ledger.account_open(
            organization=invoice.organization, kind=Account.Kind.CREDIT, currency=refund.currency
        ).pk,
        credit_account_id=ledger.platform_account(
            kind=Account.Kind.STRIPE_CLEARING, currency=refund.currency
        ).pk,
        amount_micros=refund.amount_micros,
        currency=refund.currency,
        timeout=REFUND_HOLD_TIMEOUT,
        description=f"refund {refund.pk} of invoice {invoice.number} ({note.number})",
        actor=actor,
    )
    return refund


def invoice_payment_refund(
    *, payment_id: int, amount_micros: int, reason: str, actor: str, request_key: str
) -> InvoiceRefund:
    """Operator finance: correct the invoice by a credit note of ``amount_micros``
    (before tax) and return its total to the card that paid. Keyed by
    ``request_key``: the same request twice refunds once."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a refund needs a reason", details={"field": "reason"})
    client = stripe_client()  # 503 before anything is recorded
    refund = _invoice_refund_reserve(
        payment_id=payment_id,
        amount_micros=amount_micros,
        reason=reason,
        actor=actor,
        request_key=request_key,
    )
    if refund.status != InvoiceRefund.Status.PENDING:
        return refund
    payment = refund.payment
    try:
        made = client.v1.refunds.create(
            params={
                "payment_intent": payment.payment_intent_id or "",
                "amount": to_minor(refund.amount_micros, refund.currency),
                "metadata": {
                    "tandem_invoice_refund": str(refund.pk),
                    "tandem_invoice": str(refund.invoice_id),
                    "tandem_credit_note": refund.credit_note,
                },
            },
            options={"idempotency_key": f"tandem-invoice-refund-{refund.pk}"},
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        invoice_refund_settle(
            refund_id=refund.pk, stripe_refund={"status": "failed", "failure_reason": _message(exc)}
        )
        raise Conflict(
            f"Stripe refused the refund: {_message(exc)}; credit note {refund.credit_note} "
            "stands as the buyer's prepaid credit",
            details={"refund": refund.pk, "credit_note": refund.credit_note},
        ) from exc
    invoice_refund_settle(refund_id=refund.pk, stripe_refund=as_dict(made))
    return InvoiceRefund.objects.get(pk=refund.pk)


def _announce_refund(refund: InvoiceRefund) -> None:
    _announce(
        refund.invoice_id,
        pev.INVOICE_PAYMENT_REFUNDED,
        pev.InvoicePaymentRefunded(
            organization=refund.organization_id,
            invoice=refund.invoice_id,
            number=refund.invoice.number or "",
            payment=refund.payment_id,
            refund=refund.pk,
            amount_micros=refund.amount_micros,
            currency=refund.currency,
            origin=refund.origin,
            credit_note=refund.credit_note,
            credit_micros=refund.credit_micros,
            receivable_micros=refund.receivable_micros,
            stripe_refund=refund.stripe_refund_id or "",
        ),
        tenant_id=refund.organization_id,
    )


@retry_transaction
def invoice_refund_settle(*, refund_id: int, stripe_refund: dict[str, Any]) -> str:
    """Post (Stripe accepted) or release (Stripe refused) a reserved refund, once."""
    refund = InvoiceRefund.objects.select_for_update().select_related("invoice").get(pk=refund_id)
    if refund.status != InvoiceRefund.Status.PENDING:
        return f"invoice refund {refund.pk} is {refund.status} already"
    if stripe_refund.get("status") in ("failed", "canceled"):
        ledger.hold_void(hold_id=refund.hold_id, actor=ACTOR)
        refund.status = InvoiceRefund.Status.FAILED
        refund.failure_message = str(stripe_refund.get("failure_reason") or "failed")[:500]
    else:
        ledger.hold_post(hold_id=refund.hold_id, actor=ACTOR)
        refund.status = InvoiceRefund.Status.SUCCEEDED
        refund.credit_micros = refund.amount_micros
    refund.stripe_refund_id = str(stripe_refund.get("id") or "") or None
    refund.resolved_at = timezone.now()
    refund.save()
    if refund.status == InvoiceRefund.Status.SUCCEEDED:
        _announce_refund(refund)
    return f"invoice refund {refund.pk} {refund.status}"


@retry_transaction
def invoice_refund_apply_from_stripe(
    *, stripe_refund: dict[str, Any], charge: dict[str, Any] | None = None
) -> str | None:
    """A refund as Stripe reports it, if it is of an invoice payment (else None): one
    of ours settles its reservation; one made in Stripe's dashboard is clawed back
    from the buyer's unused credit, the rest owed again. Once per refund id."""
    refund_id = str(stripe_refund.get("id") or "")
    known = InvoiceRefund.objects.filter(stripe_refund_id=refund_id).first() if refund_id else None
    raw = (stripe_refund.get("metadata") or {}).get("tandem_invoice_refund")
    if known is None and raw and str(raw).isdigit():
        known = InvoiceRefund.objects.filter(pk=int(raw)).first()
    if known is not None:
        if known.status == InvoiceRefund.Status.PENDING:
            return invoice_refund_settle(refund_id=known.pk, stripe_refund=stripe_refund)
        return f"invoice refund {known.pk} is {known.status} already"
    intent_id = object_id(stripe_refund.get("payment_intent")) or object_id(
        (charge or {}).get("payment_intent")
    )
    payment = (
        InvoicePayment.objects.select_for_update().filter(payment_intent_id=intent_id).first()
        if intent_id
        else None
    )
    if payment is None:
        return None
    if stripe_refund.get("status") in ("failed", "canceled"):
        return f"refund {refund_id} {stripe_refund.get('status')} at Stripe; nothing to claw back"
    if payment.status != InvoicePayment.Status.SUCCEEDED:
        raise RefundNotReady(f"refund {refund_id}: invoice payment {payment.pk} is not applied yet")

    amount = from_minor(int(stripe_refund.get("amount") or 0), payment.currency)
    invoice = Invoice.objects.get(pk=payment.invoice_id)
    from_credit, owed = top_up_claw_back(
        transfer_id=f"refund:{refund_id}",
        organization=invoice.organization,
        amount_micros=amount,
        currency=payment.currency,
        why=f"refund {refund_id} of invoice {invoice.number}'s payment made in Stripe",
    )
    refund = InvoiceRefund.objects.create(
        payment=payment,
        invoice=invoice,
        organization_id=payment.organization_id,
        amount_micros=amount,
        currency=payment.currency,
        status=InvoiceRefund.Status.SUCCEEDED,
        origin=InvoiceRefund.Origin.STRIPE,
        stripe_refund_id=refund_id,
        reason="refunded in Stripe",
        credit_micros=from_credit,
        receivable_micros=owed,
        resolved_at=timezone.now(),
    )
    _announce_refund(refund)
    return f"refund {refund_id} of invoice {invoice.number}: {from_credit} from credit, {owed} owed"


# --- the follower --------------------------------------------------------------------------------


class InvoiceCollectionFollower(Follower):
    """Starts collecting each invoice when it is finalized (``InvoiceFinalized`` on
    the stream type ``billing.invoice``); the attempt commits with the follower's
    position and is sent to Stripe by an actor after the commit.

    An invoice finalized longer ago than the whole dunning schedule is not charged
    by surprise (the follower newly deployed, or stopped for that long): finance
    starts its collection with a retry."""

    name = "payments.invoice_collection"
    stream_types = (INVOICE_STREAM,)
    batch_size = 100

    def handle(self, event: RecordedEvent) -> None:
        if event.type != INVOICE_FINALIZED:
            return
        horizon = timedelta(days=max(retry_days(), default=0) + 1)
        if event.recorded_at < timezone.now() - horizon:
            return
        invoice = Invoice.objects.filter(key=event.payload.get("key", "")).first()
        if invoice is None:
            return
        try:
            with transaction.atomic():
                invoice_collection_start(invoice=invoice)
        except IntegrityError:
            # Finance started this collection between our read and insert: theirs stands.
            logger.info("invoice %s: collection started elsewhere", invoice.pk)


invoice_collection_follower = register(InvoiceCollectionFollower())
