"""Accounts-receivable aging for people: what each buyer still owes on its open and
past-due invoices, in buckets by days past the due date (not yet due, 1–30, 31–60,
61–90, over 90), with totals per currency.

What is owed on an invoice is ``settlement.outstanding`` (the amount due, less what
was paid, written off or credited back to the receivable), the same number the
receivables export and the reconciliation use, so the three agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from invoicing.models import Invoice
from invoicing.settlement import outstanding

AGING_BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")
BUCKET_NAMES = {
    "current": "Not yet due",
    "1-30": "1–30 days",
    "31-60": "31–60 days",
    "61-90": "61–90 days",
    "90+": "Over 90 days",
}


def aging_bucket_of(days_past_due: int) -> str:
    """An invoice due today or later is current; one day past due is in 1–30."""
    if days_past_due <= 0:
        return "current"
    if days_past_due <= 30:
        return "1-30"
    if days_past_due <= 60:
        return "31-60"
    if days_past_due <= 90:
        return "61-90"
    return "90+"


@dataclass(slots=True)
class AgingRow:
    """One buyer's receivables in one currency: ``buckets`` in ``AGING_BUCKETS`` order."""

    organization_id: int
    organization: str
    currency: str
    invoices: int = 0
    oldest_days_past_due: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(AGING_BUCKETS))

    @property
    def total_micros(self) -> int:
        return sum(self.buckets)


@dataclass(slots=True)
class AgingTotal:
    currency: str
    invoices: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(AGING_BUCKETS))

    @property
    def total_micros(self) -> int:
        return sum(self.buckets)


@dataclass(frozen=True, slots=True)
class ReceivablesAging:
    as_of: datetime
    rows: list[AgingRow]  # by currency, then the largest total first
    totals: list[AgingTotal]  # one per currency


def receivables_aging(*, as_of: datetime) -> ReceivablesAging:
    """Open and past-due invoices finalized by ``as_of`` that still owe something,
    aged on ``as_of`` and summed per buyer: two queries (the invoices with their
    buyers, their credit notes), whatever their number."""
    invoices = (
        Invoice.objects.filter(
            status__in=(Invoice.Status.OPEN, Invoice.Status.PAST_DUE), finalized_at__lte=as_of
        )
        .select_related("organization")
        .prefetch_related("credit_notes")
        # Not the frozen documents: a thousand of them cost more than the aging.
        .defer("document")
        .order_by("due_at", "pk")
    )
    rows: dict[tuple[str, int], AgingRow] = {}
    totals: dict[str, AgingTotal] = {}
    today = as_of.astimezone(UTC).date()
    for invoice in invoices:
        owed = outstanding(invoice)
        if owed <= 0:
            continue
        due = invoice.due_at or invoice.finalized_at
        assert due is not None  # finalized
        days = (today - due.astimezone(UTC).date()).days
        index = AGING_BUCKETS.index(aging_bucket_of(days))
        row = rows.setdefault(
            (invoice.currency, invoice.organization_id),
            AgingRow(invoice.organization_id, invoice.organization.name, invoice.currency),
        )
        row.invoices += 1
        row.buckets[index] += owed
        row.oldest_days_past_due = max(row.oldest_days_past_due, days)
        total = totals.setdefault(invoice.currency, AgingTotal(invoice.currency))
        total.invoices += 1
        total.buckets[index] += owed
    ordered = sorted(
        rows.values(),
        key=lambda r: (r.currency, -r.total_micros, r.organization, r.organization_id),
    )
    return ReceivablesAging(as_of, ordered, [totals[c] for c in sorted(totals)])
