"""Reads of invoices, credit notes, billing profiles and provider statements, scoped
to the caller's organization; with the invoice documents and the period helpers
other apps read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.db.models import Count, Prefetch, QuerySet

from core.errors import NotFound
from core.models import Organization
from core.tenancy import Caller

# The app's public surface for the apps above it:
from invoicing.aging import AGING_BUCKETS as AGING_BUCKETS
from invoicing.aging import BUCKET_NAMES as BUCKET_NAMES
from invoicing.aging import ReceivablesAging as ReceivablesAging
from invoicing.aging import receivables_aging as receivables_aging
from invoicing.documents import invoice_html as invoice_html
from invoicing.documents import invoice_json as invoice_json
from invoicing.documents import invoice_pdf as invoice_pdf
from invoicing.earnings import ProviderEarnings as ProviderEarnings
from invoicing.earnings import provider_earnings_breakdown as provider_earnings_breakdown
from invoicing.models import (
    BillingProfile,
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceLineEntry,
    ProviderStatement,
)
from invoicing.periods import grace, month_bounds
from invoicing.periods import parse_period as parse_period
from invoicing.settlement import outstanding as outstanding
from invoicing.statements import statement_compute, statement_document, statement_key

# --- invoices -----------------------------------------------------------------


def _visible_invoices(caller: Caller) -> QuerySet[Invoice]:
    if caller.is_platform_finance:
        return Invoice.objects.all()
    return Invoice.objects.filter(organization=caller.organization)


def invoices_for_caller(
    *,
    caller: Caller,
    status: str | None = None,
    kind: str | None = None,
    period: date | None = None,
    organization_id: int | None = None,
) -> QuerySet[Invoice]:
    """The caller organization's invoices, drafts included; every organization's for
    operator finance (``organization_id`` narrows it to one). ``period``: invoices
    whose period starts in that month (a job invoice's period is its issue time)."""
    invoices = _visible_invoices(caller)
    if organization_id is not None:
        invoices = invoices.filter(organization_id=organization_id)
    if status is not None:
        invoices = invoices.filter(status=status)
    if kind is not None:
        invoices = invoices.filter(kind=kind)
    if period is not None:
        start, end = month_bounds(period)
        invoices = invoices.filter(period_start__gte=start, period_start__lt=end)
    return invoices


def invoice_get(*, caller: Caller, invoice_id: int) -> Invoice:
    """One invoice the caller may see, with its lines, their journal entries and its
    credit notes; another organization's is a 404."""
    invoice = (
        _visible_invoices(caller)
        .select_related("organization")
        .prefetch_related(
            Prefetch("lines", queryset=InvoiceLine.objects.order_by("ordinal")),
            Prefetch("lines__entries", queryset=InvoiceLineEntry.objects.order_by("pk")),
            "credit_notes",
        )
        .filter(pk=invoice_id)
        .first()
    )
    if invoice is None:
        raise NotFound(
            f"no invoice {invoice_id} in your organization", details={"invoice": invoice_id}
        )
    return invoice


def credit_notes_of(*, invoice: Invoice) -> QuerySet[CreditNote]:
    return CreditNote.objects.filter(invoice=invoice)


def organization_for_caller(*, caller: Caller, organization_id: int) -> Organization:
    """The caller's own organization, or for operator finance any organization;
    anything else is a 404 (ids do not tell what exists)."""
    if caller.is_platform_finance:
        organization = Organization.objects.filter(pk=organization_id).first()
    else:
        organization = caller.organization if caller.organization.pk == organization_id else None
    if organization is None:
        raise NotFound(
            f"no organization {organization_id} visible to you",
            details={"organization": organization_id},
        )
    return organization


def billing_profile_of(*, organization: Organization) -> BillingProfile:
    """The organization's billing profile; an unsaved default one when none was set."""
    found = BillingProfile.objects.filter(organization=organization).first()
    return found or BillingProfile(organization=organization)


# --- provider statements ------------------------------------------------------


def statements_for_caller(
    *, caller: Caller, organization_id: int | None = None
) -> QuerySet[ProviderStatement]:
    """Stored statements of closed months: the caller's, or every provider's for
    operator finance (``organization_id`` narrows it to one)."""
    statements = ProviderStatement.objects.all()
    if not caller.is_platform_finance:
        statements = statements.filter(organization=caller.organization)
    if organization_id is not None:
        statements = statements.filter(organization_id=organization_id)
    return statements


@dataclass(frozen=True, slots=True)
class StatementView:
    organization_id: int
    period: date
    closed: bool  # True: the statement written when the month closed
    generated_at: datetime
    document: dict[str, Any]


def statement_for_period(
    *, provider: Organization, period: date, now: datetime, currency: str
) -> StatementView:
    """A provider's month: the statement stored when the month closed, or, for a month
    not closed yet (the current one), computed from the journal now."""
    stored = ProviderStatement.objects.filter(
        key=statement_key(provider.pk, period, currency)
    ).first()
    if stored is not None:
        return StatementView(provider.pk, period, True, stored.generated_at, stored.document)
    computed = statement_compute(provider=provider, period=period, currency=currency)
    return StatementView(provider.pk, period, False, now, statement_document(computed, provider))


# --- the month close ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonthCloseStatus:
    """Where a month's close stands: its buyers' monthly invoices by status and the
    providers' statements written. ``closed``: the month has ended, it has
    invoices, and none of them is still a draft."""

    period: date
    ended: bool
    grace_ends_at: datetime
    drafts: int
    finalized: int  # open, paid, void or uncollectible
    statements: int

    @property
    def closed(self) -> bool:
        return self.ended and self.finalized > 0 and self.drafts == 0

    @property
    def state(self) -> str:
        if not self.ended:
            return "in progress"
        if self.closed:
            return "closed"
        if self.drafts == 0 and self.finalized == 0:
            return "nothing to close"
        return "open"


def months_close_status(*, months: int, now: datetime) -> list[MonthCloseStatus]:
    """The close of each of the last ``months`` months up to the current one, newest
    first: two queries (invoices and statements counted by month), whatever the
    months hold."""
    current = now.date().replace(day=1)
    index = current.year * 12 + current.month - 1
    periods = [date((index - n) // 12, (index - n) % 12 + 1, 1) for n in range(months)]
    since = month_bounds(periods[-1])[0]
    invoices = (
        Invoice.objects.filter(kind=Invoice.Kind.MONTHLY, period_start__gte=since)
        .values("period_start", "status")
        .annotate(n=Count("pk"))
        .values_list("period_start", "status", "n")
    )
    counts: dict[date, list[int]] = {}
    for start, status, n in invoices:
        row = counts.setdefault(start.date().replace(day=1), [0, 0])
        row[0 if status == Invoice.Status.DRAFT else 1] += n
    statement_counts: dict[date, int] = {}
    for start, n in (
        ProviderStatement.objects.filter(period_start__gte=since)
        .values("period_start")
        .annotate(n=Count("pk"))
        .values_list("period_start", "n")
    ):
        month = start.date().replace(day=1)
        statement_counts[month] = statement_counts.get(month, 0) + n
    out = []
    for period in periods:
        end = month_bounds(period)[1]
        drafts, finalized = counts.get(period, [0, 0])
        out.append(
            MonthCloseStatus(
                period=period,
                ended=now >= end,
                grace_ends_at=end + grace(),
                drafts=drafts,
                finalized=finalized,
                statements=statement_counts.get(period, 0),
            )
        )
    return out
