"""A finalized invoice's life after finalization: paid, past due, uncollectible
(written off), voided — each a conditional change and an event on its stream."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from django.utils import timezone

from core.db import (
    retry_transaction,
)
from core.errors import Conflict, InvalidInput
from invoicing.events import InvoicePaid, InvoicePastDue, InvoiceUncollectible, InvoiceVoided
from invoicing.finalization import _append, _post, invoice_finalize
from invoicing.models import (
    Invoice,
)
from invoicing.settlement import outstanding
from ledger.models import Account
from ledger.services import account_open, platform_account


def _final(locked: Invoice, allowed: tuple[str, ...], action: str) -> Invoice:
    """``locked`` (read with ``select_for_update``), if its status allows ``action``."""
    if locked.status not in allowed:
        raise Conflict(
            f"invoice {locked.number or locked.key} is {locked.status}; it cannot be {action}",
            details={"invoice": locked.number or locked.key, "status": locked.status},
        )
    return locked


@retry_transaction
def invoice_mark_paid(
    *,
    invoice: Invoice,
    payment_reference: str,
    actor: str = "payments",
    now: datetime | None = None,
) -> Invoice:
    """The buyer paid what the invoice left owed: the receivable is settled against
    Stripe clearing (``invoice:<key>:paid``) and the invoice is closed. Paying a
    paid invoice with the same reference again changes nothing."""
    now = now or timezone.now()
    reference = (payment_reference or "").strip()[:255]
    if not reference:
        raise InvalidInput("a payment needs its reference", details={"field": "payment_reference"})
    current = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if current.status == Invoice.Status.PAID and current.payment_reference == reference:
        return current
    locked = _final(current, (Invoice.Status.OPEN, Invoice.Status.PAST_DUE), "paid")
    amount = _outstanding_close(
        locked,
        status=Invoice.Status.PAID,
        against=Account.Kind.STRIPE_CLEARING,
        entry=("paid", "payment", f"payment {reference} of invoice {locked.number}"),
        actor=actor,
        now=now,
    )
    locked.amount_paid_micros += amount
    locked.payment_reference = reference
    locked.save()
    _append(
        locked,
        InvoicePaid(
            key=locked.key, payment_reference=reference, amount_micros=amount, at=now.isoformat()
        ),
        actor,
    )
    return locked


def _outstanding_close(
    locked: Invoice,
    *,
    status: str,
    against: str,
    entry: tuple[str, str, str],
    actor: str,
    now: datetime,
) -> int:
    """Settle what the invoice still owes against a platform account (clearing for a
    payment, adjustments for a write-off) and close it with ``status``; returns the
    amount. ``entry`` is the journal entry's id suffix, kind and description."""
    suffix, kind, description = entry
    amount = outstanding(locked)
    receivable = account_open(
        organization=locked.organization, kind=Account.Kind.RECEIVABLE, currency=locked.currency
    )
    other = platform_account(kind=against, currency=locked.currency)
    _post(
        f"invoice:{locked.key}:{suffix}",
        locked.currency,
        {other.pk: amount, receivable.pk: -amount},
        kind,
        description,
        actor,
    )
    locked.status = status
    locked.closed_at = now
    return amount


@retry_transaction
def invoice_mark_past_due(
    *, invoice: Invoice, actor: str = "payments", now: datetime | None = None
) -> Invoice:
    now = now or timezone.now()
    current = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if current.status == Invoice.Status.PAST_DUE:
        return current
    locked = _final(current, (Invoice.Status.OPEN,), "marked past due")
    locked.status = Invoice.Status.PAST_DUE
    locked.save(update_fields=["status"])
    _append(locked, InvoicePastDue(key=locked.key, at=now.isoformat()), actor)
    return locked


@retry_transaction
def invoice_mark_uncollectible(
    *, invoice: Invoice, reason: str = "", actor: str = "payments", now: datetime | None = None
) -> Invoice:
    """Give up on what is owed: written off to the adjustments account (bad debt)."""
    now = now or timezone.now()
    current = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if current.status == Invoice.Status.UNCOLLECTIBLE:
        return current
    locked = _final(current, (Invoice.Status.OPEN, Invoice.Status.PAST_DUE), "marked uncollectible")
    amount = _outstanding_close(
        locked,
        status=Invoice.Status.UNCOLLECTIBLE,
        against=Account.Kind.ADJUSTMENTS,
        entry=(
            "written-off",
            "write_off",
            f"invoice {locked.number} uncollectible: {reason.strip()[:200] or 'written off'}",
        ),
        actor=actor,
        now=now,
    )
    locked.written_off_micros += amount
    locked.save()
    _append(
        locked,
        InvoiceUncollectible(
            key=locked.key,
            amount_micros=amount,
            reason=reason.strip()[:500],
            at=now.isoformat(),
        ),
        actor,
    )
    return locked


@retry_transaction
def invoice_void(
    *, invoice: Invoice, reason: str, actor: str = "system", now: datetime | None = None
) -> Invoice:
    """Cancel an unpaid finalized invoice entirely: its number stays used; tax and
    rounding are reversed, what it charged comes off revenue, what prepaid credit
    paid goes back to the credit and what was owed comes off the receivable."""
    now = now or timezone.now()
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("voiding needs a reason", details={"field": "reason"})
    current = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if current.status == Invoice.Status.VOID:
        return current
    locked = _final(current, (Invoice.Status.OPEN, Invoice.Status.PAST_DUE), "voided")
    if locked.amount_paid_micros or locked.credit_notes.exists():
        raise Conflict("an invoice with payments or credit notes is corrected by a credit note")
    org, currency = locked.organization, locked.currency
    signed: dict[int, int] = defaultdict(int)
    signed[platform_account(kind=Account.Kind.TAX_PAYABLE, currency=currency).pk] += (
        locked.tax_micros
    )
    signed[platform_account(kind=Account.Kind.ROUNDING, currency=currency).pk] += (
        locked.rounding_micros
    )
    signed[platform_account(kind=Account.Kind.REVENUE, currency=currency).pk] += (
        locked.subtotal_exact_micros
    )
    signed[account_open(organization=org, kind=Account.Kind.CREDIT, currency=currency).pk] -= (
        locked.prepaid_applied_micros
    )
    signed[account_open(organization=org, kind=Account.Kind.RECEIVABLE, currency=currency).pk] -= (
        locked.amount_due_micros
    )
    _post(
        f"invoice:{locked.key}:void",
        currency,
        signed,
        "void",
        f"invoice {locked.number} void: {reason[:200]}",
        actor,
    )
    locked.status = Invoice.Status.VOID
    locked.closed_at = now
    locked.save()
    _append(locked, InvoiceVoided(key=locked.key, reason=reason[:500], at=now.isoformat()), actor)
    return locked


def invoice_finalize_requested(
    *, invoice: Invoice, actor: str, now: datetime | None = None
) -> Invoice:
    """Finance finalizes a draft ahead of the close. A monthly draft only once its month
    has ended: finalizing closes the buyer's usage month, and usage of the rest of a
    running month would move to the next one. A final invoice is returned as it is."""
    now = now or timezone.now()
    if (
        invoice.status == Invoice.Status.DRAFT
        and invoice.kind == Invoice.Kind.MONTHLY
        and invoice.period_end > now
    ):
        raise Conflict(
            f"{invoice.period_start:%Y-%m} has not ended yet: its draft is finalized "
            "after the month ends",
            details={"invoice": invoice.pk, "period": f"{invoice.period_start:%Y-%m}"},
        )
    return invoice_finalize(invoice=invoice, actor=actor, now=now)
