"""Credit notes: a finalized invoice is corrected by a numbered credit note (never by
editing it), credited back to prepaid credit or to the receivable."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from django.utils import timezone

from core.db import (
    retry_transaction,
)
from core.errors import Conflict, InvalidInput
from core.money import CURRENCIES, MICROS, Money, rate_amount
from invoicing.amounts import cents
from invoicing.events import CreditNoteIssued
from invoicing.finalization import _append, _post
from invoicing.lifecycle import _final
from invoicing.models import (
    CreditNote,
    Invoice,
)
from invoicing.numbering import _next_number
from invoicing.settlement import outstanding
from ledger.models import Account
from ledger.services import account_open, platform_account
from pricing.selectors import BPS


@retry_transaction
def credit_note_issue(
    *,
    invoice: Invoice,
    amount_micros: int,
    reason: str,
    key: str,
    actor: str = "system",
    now: datetime | None = None,
) -> CreditNote:
    """Correct a finalized invoice by ``amount_micros`` before tax (a whole number of
    cents). The tax on it is given back too. What the buyer still owes on the invoice
    is reduced first; the rest becomes prepaid credit. ``key`` makes it idempotent."""
    now = now or timezone.now()
    found = CreditNote.objects.filter(key=key).first()
    if found is not None:
        if found.invoice_id != invoice.pk or found.amount_micros != amount_micros:
            raise Conflict(
                f"credit note {key!r} exists with another body", details={"field": "key"}
            )
        return found
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a credit note needs a reason", details={"field": "reason"})
    locked = _final(
        Invoice.objects.select_for_update().get(pk=invoice.pk),
        (
            Invoice.Status.OPEN,
            Invoice.Status.PAST_DUE,
            Invoice.Status.PAID,
            Invoice.Status.UNCOLLECTIBLE,
        ),
        "credited",
    )
    currency = locked.currency
    step = MICROS // 10 ** CURRENCIES[currency]
    if (
        isinstance(amount_micros, bool)
        or not isinstance(amount_micros, int)
        or amount_micros <= 0
        or amount_micros % step
    ):
        raise InvalidInput(
            "amount must be a positive whole number of cents", details={"field": "amount"}
        )
    credited = sum(locked.credit_notes.values_list("amount_micros", flat=True))
    if credited + amount_micros > locked.subtotal_micros:
        raise InvalidInput(
            f"credit notes may total at most the invoice subtotal "
            f"{Money(locked.subtotal_micros, currency).format()}; "
            f"{Money(credited, currency).format()} is credited already",
            details={"field": "amount"},
        )
    tax = cents(rate_amount(amount_micros, locked.tax_rate_bps, BPS), currency)
    total = amount_micros + tax
    to_receivable = 0
    if locked.status in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE):
        to_receivable = min(total, outstanding(locked))
    to_credit = total - to_receivable
    number = _next_number("CN")
    org = locked.organization
    signed: dict[int, int] = defaultdict(int)
    signed[platform_account(kind=Account.Kind.REVENUE, currency=currency).pk] += amount_micros
    signed[platform_account(kind=Account.Kind.TAX_PAYABLE, currency=currency).pk] += tax
    signed[account_open(organization=org, kind=Account.Kind.RECEIVABLE, currency=currency).pk] -= (
        to_receivable
    )
    signed[account_open(organization=org, kind=Account.Kind.CREDIT, currency=currency).pk] -= (
        to_credit
    )
    position = _post(
        f"cn:{number}",
        currency,
        signed,
        "credit_note",
        f"credit note {number} on {locked.number}: {reason[:200]}",
        actor,
    )
    note = CreditNote.objects.create(
        invoice=locked,
        key=key[:240],
        issuer=locked.issuer,
        number=number,
        currency=currency,
        amount_micros=amount_micros,
        tax_micros=tax,
        total_micros=total,
        to_receivable_micros=to_receivable,
        to_credit_micros=to_credit,
        reason=reason[:500],
        entry_position=position or 0,
        issued_at=now,
        issued_by=actor[:200],
    )
    locked.credited_micros += total
    locked.save(update_fields=["credited_micros"])
    _append(
        locked,
        CreditNoteIssued(
            key=locked.key,
            credit_note=number,
            note_key=note.key,
            amount_micros=amount_micros,
            tax_micros=tax,
            to_receivable_micros=to_receivable,
            to_credit_micros=to_credit,
            reason=note.reason,
            at=now.isoformat(),
        ),
        actor,
    )
    return note
