"""A buyer's usage by day and product over a period, with what it cost: the rows of
the console's usage page and of its CSV download (the same rows).

A row is one UTC day, one product and one model. Products:

- **Tokens** metered for the organization: fine-tunes' training and evaluation
  tokens, inference's input and output tokens, by model (base or fine-tuned), summed
  in one SQL query. Cost is the price book's rate (``billing.pricing.rate_for``, the
  function rating uses, at the row's first use) applied to the row's total with
  rating's own arithmetic (``rate_quantity``, half-even to a micro-unit). Rating
  rounds each event alone, so a row can differ from the ledger by under one
  micro-unit per event it sums; invoices carry the ledger's amounts.
- **GPU time** of the organization's raw leases, as billed: a lease settles its own
  GPU-seconds through its credit hold (the lease price plus the platform fee), and
  rating leaves the GPU-seconds metered for it alone, so the amounts here are the
  leases' own (``gpu_seconds_billed``, ``billed_micros``), by GPU model, on the day
  of ``billed_until`` (the end of the time settled so far), as the Together-shaped
  usage report (marketplace.together.usage) reports them. Managed leases (fine-tunes,
  inference) are paid per token, so their GPU time is not a product here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db.models import Min, Q, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import TruncDate

from billing.pricing import rate_for
from billing.rating import rate_quantity
from core.tenancy import Caller
from marketplace.selectors import leases_for_org
from metering.selectors import usage_list

PRODUCTS: dict[str, tuple[str, str]] = {
    # usage type: (what a person calls it, its unit)
    "tokens.training": ("Fine-tuning: training tokens", "tokens"),
    "tokens.evaluation": ("Fine-tuning: evaluation tokens", "tokens"),
    "tokens.prompt": ("Inference: input tokens", "tokens"),
    "tokens.completion": ("Inference: output tokens", "tokens"),
    "gpu.seconds": ("GPU time (raw leases)", "GPU-seconds"),
}
GPU_TIME = "gpu.seconds"
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
    start, end = _start(since), _start(until) + timedelta(days=1)
    rows = []
    if product != GPU_TIME:
        rows += _token_rows(caller, start, end, currency, product, model)
    if product in (None, GPU_TIME):
        rows += _gpu_rows(caller, start, end, currency, model)
    order = list(PRODUCTS)
    rows.sort(key=lambda row: (row.day, order.index(row.product), row.model))
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


def _token_rows(
    caller: Caller,
    start: datetime,
    end: datetime,
    currency: str,
    product: str | None,
    model: str | None,
) -> list[UsageRow]:
    tokens = [name for name in PRODUCTS if name != GPU_TIME]
    usage = usage_list(caller=caller, since=start, until=end).filter(
        buyer_id=caller.organization.pk, type__in=[product] if product else tokens
    )
    if model:
        usage = usage.filter(dimensions__model=model)
    grouped = (
        usage.annotate(
            day=TruncDate("occurred_at", tzinfo=UTC),
            model=KeyTextTransform("model", "dimensions"),
            training_type=KeyTextTransform("training_type", "dimensions"),
        )
        .values("day", "type", "model", "training_type")
        .annotate(quantity=Sum("quantity"), first_at=Min("occurred_at"))
        .order_by("day", "type", "model", "training_type")
    )
    merged: dict[tuple[date, str, str], list[int | None]] = {}
    for found in grouped:
        row: dict[str, Any] = dict(found)
        dimensions = {
            name: row[name] for name in ("model", "training_type") if row[name] is not None
        }
        quantity = int(row["quantity"] or 0)
        try:
            rate = rate_for(row["type"], dimensions, row["first_at"])
            amount: int | None = rate_quantity(rate, quantity, dimensions).amount_micros
        except (KeyError, LookupError, ValueError):
            amount = None  # usage the book has no price for (yet): shown, not costed
        # training types (LoRA, full) are priced apart, shown together per model
        sums = merged.setdefault((row["day"], row["type"], row["model"] or ""), [0, 0])
        sums[0] = int(sums[0] or 0) + quantity
        sums[1] = None if amount is None or sums[1] is None else sums[1] + amount
    return [
        UsageRow(
            day=day,
            product=usage_type,
            model=name,
            quantity=int(quantity or 0),
            amount_micros=amount,
            currency=currency,
        )
        for (day, usage_type, name), (quantity, amount) in merged.items()
    ]


def _gpu_rows(
    caller: Caller, start: datetime, end: datetime, currency: str, model: str | None
) -> list[UsageRow]:
    leases = leases_for_org(organization=caller.organization).filter(
        Q(managed=False, billed_until__gte=start, billed_until__lt=end, gpu_seconds_billed__gt=0)
    )
    if model:
        leases = leases.filter(gpu_model=model)
    grouped = (
        leases.annotate(day=TruncDate("billed_until", tzinfo=UTC))
        .values("day", "gpu_model", "currency")
        .annotate(quantity=Sum("gpu_seconds_billed"), amount=Sum("billed_micros"))
        .order_by("day", "gpu_model", "currency")
    )
    return [
        UsageRow(
            day=row["day"],
            product=GPU_TIME,
            model=row["gpu_model"],
            quantity=int(row["quantity"] or 0),
            amount_micros=int(row["amount"] or 0),
            currency=row["currency"],
        )
        for row in grouped
    ]
