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
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core.db import retry_transaction
from core.errors import Conflict, InvalidInput
from core.eventstore import NewEvent, RecordedEvent, event_append
from core.followers import Follower, register
from core.queue import task_send_on_commit
from invoicing.events import INVOICE_STREAM, InvoiceFinalized
from invoicing.models import Invoice
from invoicing.selectors import outstanding
from payments import events as pev
from payments.common import INVOICE_PAYMENT_SUBMIT_TASK
from payments.models import InvoiceCollection, InvoicePayment, StripeCustomer
from payments.stripe_client import stripe_configured

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
        expected_version=None,
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
        if event.type != InvoiceFinalized.type:
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
