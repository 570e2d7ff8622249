"""The invoice register and the accounts-receivable aging: finalized invoices, and
what open and past-due ones still owe, in buckets by days past due."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
from django.db.models import Count

from exports.frames import Column, _money_columns, frame
from invoicing.models import Invoice
from invoicing.selectors import month_bounds, outstanding

AGING_BUCKETS = ("0-30", "31-60", "61-90", "90+")


# --- the invoice register ------------------------------------------------------------

INVOICE_REGISTER_COLUMNS = [
    Column("number", "text"),
    Column("key", "text"),
    Column("organization_id", "int"),
    Column("organization", "text"),
    Column("kind", "text"),
    Column("status", "text"),
    Column("currency", "text"),
    Column("period_start", "time"),
    Column("period_end", "time"),
    Column("job", "text"),
    Column("finalized_at", "time"),
    Column("due_at", "time"),
    Column("closed_at", "time"),
    Column("tax_rate_bps", "int"),
    *_money_columns(
        "subtotal_exact",
        "subtotal",
        "rounding",
        "tax",
        "total",
        "prepaid_applied",
        "amount_due",
        "amount_paid",
        "credited",
        "written_off",
        "outstanding",
    ),
    Column("payment_reference", "text"),
]


def _final_invoices(period: date | None) -> Any:
    invoices = Invoice.objects.exclude(status=Invoice.Status.DRAFT).select_related("organization")
    if period is not None:
        start, end = month_bounds(period)
        invoices = invoices.filter(period_start__gte=start, period_start__lt=end)
    return invoices.prefetch_related("credit_notes").order_by("issuer", "number")


def invoice_register_frame(*, period: date | None = None) -> pd.DataFrame:
    """Every finalized invoice (open, past due, paid, void, uncollectible)."""
    records = []
    for invoice in _final_invoices(period):
        records.append(
            {
                "number": invoice.number,
                "key": invoice.key,
                "organization_id": invoice.organization_id,
                "organization": invoice.organization.name,
                "kind": invoice.kind,
                "status": invoice.status,
                "currency": invoice.currency,
                "period_start": invoice.period_start,
                "period_end": invoice.period_end,
                "job": invoice.job,
                "finalized_at": invoice.finalized_at,
                "due_at": invoice.due_at,
                "closed_at": invoice.closed_at,
                "tax_rate_bps": invoice.tax_rate_bps,
                "subtotal_exact_micros": invoice.subtotal_exact_micros,
                "subtotal_micros": invoice.subtotal_micros,
                "rounding_micros": invoice.rounding_micros,
                "tax_micros": invoice.tax_micros,
                "total_micros": invoice.total_micros,
                "prepaid_applied_micros": invoice.prepaid_applied_micros,
                "amount_due_micros": invoice.amount_due_micros,
                "amount_paid_micros": invoice.amount_paid_micros,
                "credited_micros": invoice.credited_micros,
                "written_off_micros": invoice.written_off_micros,
                "outstanding_micros": invoice_outstanding(invoice),
                "payment_reference": invoice.payment_reference,
            }
        )
    return frame(INVOICE_REGISTER_COLUMNS, records)


def invoice_outstanding(invoice: Invoice) -> int:
    """What is still owed on a finalized invoice; nothing on a void, paid or
    written-off one (``outstanding`` reads amounts only, not the status)."""
    if invoice.status not in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE):
        return 0
    return outstanding(invoice)


# --- accounts-receivable aging ----------------------------------------------------------

AR_AGING_COLUMNS = [
    Column("number", "text"),
    Column("organization_id", "int"),
    Column("organization", "text"),
    Column("currency", "text"),
    Column("status", "text"),
    Column("finalized_at", "time"),
    Column("due_at", "time"),
    Column("days_past_due", "int"),
    Column("bucket", "text"),
    *_money_columns("outstanding", "days_0_30", "days_31_60", "days_61_90", "days_90_plus"),
]


def aging_bucket(days_past_due: int) -> str:
    """Not yet due counts with the first bucket (0-30 days)."""
    if days_past_due <= 30:
        return "0-30"
    if days_past_due <= 60:
        return "31-60"
    if days_past_due <= 90:
        return "61-90"
    return "90+"


def ar_aging_frame(*, as_of: datetime) -> pd.DataFrame:
    """Open and past-due invoices with something still owed, aged by their due date."""
    bucket_column = dict(
        zip(AGING_BUCKETS, ("days_0_30", "days_31_60", "days_61_90", "days_90_plus"), strict=True)
    )
    invoices = (
        Invoice.objects.filter(
            status__in=(Invoice.Status.OPEN, Invoice.Status.PAST_DUE), finalized_at__lte=as_of
        )
        .select_related("organization")
        .prefetch_related("credit_notes")
        .order_by("due_at", "number")
    )
    records = []
    for invoice in invoices:
        owed = invoice_outstanding(invoice)
        if owed <= 0:
            continue
        assert invoice.due_at is not None  # finalized
        days = (as_of.date() - invoice.due_at.astimezone(UTC).date()).days
        bucket = aging_bucket(days)
        record = {
            "number": invoice.number,
            "organization_id": invoice.organization_id,
            "organization": invoice.organization.name,
            "currency": invoice.currency,
            "status": invoice.status,
            "finalized_at": invoice.finalized_at,
            "due_at": invoice.due_at,
            "days_past_due": days,
            "bucket": bucket,
            "outstanding_micros": owed,
        }
        for name, column in bucket_column.items():
            record[f"{column}_micros"] = owed if name == bucket else 0
        records.append(record)
    return frame(AR_AGING_COLUMNS, records)


def invoices_by_status(period: date | None = None) -> dict[str, int]:
    """How many finalized invoices are in each status (for the monthly report)."""
    query = _final_invoices(period).order_by()
    return dict(query.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
