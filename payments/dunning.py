"""Retries: the dunning run (scheduled retries of failed collections, and attempts
left pending by a crash or by Stripe not answering sent again with their own key) and
the extra attempt finance asks for."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import stripe
from django.utils import timezone

from invoicing.models import Invoice
from payments.collection import REFRESH_AFTER, RESEND_AFTER, _retry_claim, _retry_record
from payments.invoice_payments import invoice_payment_apply_intent, invoice_payment_submit
from payments.models import InvoiceCollection, InvoicePayment
from payments.stripe_client import as_dict, stripe_client

logger = logging.getLogger(__name__)


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
