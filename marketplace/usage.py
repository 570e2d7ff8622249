"""A buyer's usage by day and product over a period, with what it cost: the rows of
the console's usage page and of its CSV download (the same rows).

Products are metering's usage types: tokens of fine-tunes (training, evaluation) and
of inference (input, output), and GPU-seconds of raw leases. A row is one UTC day,
one product and one model (a base or fine-tuned model for tokens; the GPU model for
GPU time), summed in one SQL query.

Cost is the price book's rate for the row's usage (``billing.pricing.rate_for``, the
function rating uses, at the row's first use) applied to the row's total with
rating's own arithmetic (``rate_quantity``: half-even to a micro-unit; a lease's
platform fee on top). Rating rounds each event alone, so a row can differ from the
ledger's amounts by under one micro-unit per event it sums; invoices carry the
ledger's. Rows of different GPU-lease prices are rated apart, then summed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db.models import Min, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce, TruncDate

from billing.pricing import rate_for
from billing.rating import rate_quantity
from core.tenancy import Caller
from metering.selectors import usage_list

PRODUCTS: dict[str, tuple[str, str]] = {
    # usage type: (what a person calls it, its unit)
    "tokens.training": ("Fine-tuning: training tokens", "tokens"),
    "tokens.evaluation": ("Fine-tuning: evaluation tokens", "tokens"),
    "tokens.prompt": ("Inference: input tokens", "tokens"),
    "tokens.completion": ("Inference: output tokens", "tokens"),
    "gpu.seconds": ("GPU time (leases)", "GPU-seconds"),
}
# A period longer than this is refused (one row per day and product at most).
MAX_DAYS = 366


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: date
    product: str  # the usage type
    model: str
    quantity: int
    amount_micros: int | None  # None: no price in the book for it
    currency: str

    @property
    def product_name(self) -> str:
        return PRODUCTS.get(self.product, (self.product, ""))[0]

    @property
    def unit(self) -> str:
        return PRODUCTS.get(self.product, ("", "units"))[1]


@dataclass(frozen=True, slots=True)
class ProductTotal:
    product: str
    product_name: str
    unit: str
    quantity: int
    amount_micros: int


@dataclass(frozen=True, slots=True)
class UsageReport:
    since: date
    until: date  # inclusive: the last day shown
    rows: list[UsageRow]
    totals: list[ProductTotal]
    amount_micros: int
    currency: str
    as_of: datetime

    def __iter__(self) -> Iterator[UsageRow]:
        return iter(self.rows)


def _start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def usage_by_day(
    *,
    caller: Caller,
    since: date,
    until: date,
    currency: str,
    product: str | None = None,
    model: str | None = None,
    now: datetime,
) -> UsageReport:
    """The caller's organization's usage from ``since`` to ``until`` (both whole UTC
    days), optionally of one product and one model. Scoped to the caller's own
    organization even for the operator's finance staff (who may read everyone's)."""
    usage = usage_list(
        caller=caller, since=_start(since), until=_start(until) + timedelta(days=1)
    ).filter(buyer_id=caller.organization.pk, type__in=list(PRODUCTS))
    if product:
        usage = usage.filter(type=product)
    label = Coalesce(
        KeyTextTransform("model", "dimensions"), KeyTextTransform("gpu_model", "dimensions")
    )
    if model:
        usage = usage.annotate(label=label).filter(label=model)
    grouped = (
        usage.annotate(
            day=TruncDate("occurred_at", tzinfo=UTC),
            label=label,
            training_type=KeyTextTransform("training_type", "dimensions"),
            provider=KeyTextTransform("provider", "dimensions"),
            price=KeyTextTransform("lease_price_micros_per_hour", "dimensions"),
        )
        .values("day", "type", "label", "training_type", "provider", "price")
        .annotate(quantity=Sum("quantity"), first_at=Min("occurred_at"))
        .order_by("day", "type", "label", "training_type", "provider", "price")
    )
    merged: dict[tuple[date, str, str], list[int | None]] = {}
    for found_row in grouped:
        row: dict[str, Any] = dict(found_row)
        dimensions = {
            name: row[key]
            for name, key in (
                ("model", "label"),
                ("training_type", "training_type"),
                ("provider", "provider"),
                ("lease_price_micros_per_hour", "price"),
            )
            if row[key] is not None
        }
        quantity = int(row["quantity"] or 0)
        try:
            rate = rate_for(row["type"], dimensions, row["first_at"])
            amount: int | None = rate_quantity(rate, quantity, dimensions).amount_micros
        except (KeyError, LookupError, ValueError):
            amount = None  # usage the book has no price for (yet): shown, not costed
        key = (row["day"], row["type"], row["label"] or "")
        found = merged.setdefault(key, [0, 0])
        found[0] = int(found[0] or 0) + quantity
        found[1] = None if amount is None or found[1] is None else found[1] + amount
    rows = [
        UsageRow(
            day=day,
            product=usage_type,
            model=label_text,
            quantity=int(quantity or 0),
            amount_micros=amount,
            currency=currency,
        )
        for (day, usage_type, label_text), (quantity, amount) in merged.items()
    ]
    totals = []
    for usage_type, (name, unit) in PRODUCTS.items():
        of_type = [r for r in rows if r.product == usage_type]
        if of_type:
            totals.append(
                ProductTotal(
                    product=usage_type,
                    product_name=name,
                    unit=unit,
                    quantity=sum(r.quantity for r in of_type),
                    amount_micros=sum(r.amount_micros or 0 for r in of_type),
                )
            )
    return UsageReport(
        since=since,
        until=until,
        rows=rows,
        totals=totals,
        amount_micros=sum(t.amount_micros for t in totals),
        currency=currency,
        as_of=now,
    )
