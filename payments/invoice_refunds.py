"""Refunds of invoice payments: finance's go through a credit note
(``InvoiceRefund``); ones made in Stripe's dashboard are clawed back as top-up refunds
are."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import stripe
from django.db.models import Sum
from django.utils import timezone

from core.db import retry_transaction
from core.errors import Conflict, InvalidInput
from invoicing.models import Invoice
from invoicing.services import credit_note_issue
from ledger import services as ledger
from ledger.models import Account
from payments import events as pev
from payments.collection import ACTOR, _announce
from payments.invoice_payments import _message
from payments.models import InvoicePayment, InvoiceRefund
from payments.refunds import top_up_claw_back
from payments.stripe_client import (
    as_dict,
    from_minor,
    is_transient,
    object_id,
    stripe_client,
    to_minor,
    unavailable,
)

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
