"""Reads of the marketplace: the engine's snapshot of the market, each tenant's
orders and leases, the leases on a provider's GPUs, and the public market view."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Min, Prefetch, Q, QuerySet, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import TruncDate
from django.utils import timezone

from core.errors import NotFound
from core.models import Organization
from core.tenancy import Caller
from marketplace import engine
from marketplace.models import Lease, LeaseGpu, Order
from metering.selectors import usage_list
from pricing.selectors import rate_for
from pricing.services import rate_quantity
from providers import catalog
from providers.models import Gpu, Node, Offer


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


MODEL_SPECS: dict[str, engine.ModelSpec] = {
    m.slug: engine.ModelSpec(memory_gib=m.memory_gib, interconnect=m.interconnect)
    for m in catalog.CATALOG
}


def market_snapshot(
    *, now: datetime | None = None
) -> tuple[engine.Snapshot, dict[int, engine.OfferState]]:
    """What the engine sees: open orders that may start now, active offers inside
    their window on healthy nodes (degraded nodes — ECC or XID faults — take no new
    leases), those nodes' present GPUs, and every live lease."""
    now = now or timezone.now()
    currency = settings.TANDEM_CURRENCY
    offers_qs = (
        Offer.objects.filter(
            status=Offer.Status.ACTIVE,
            window_start__lte=now,
            node__health=Node.Health.HEALTHY,
            currency=currency,
        )
        .filter(Q(window_end__isnull=True) | Q(window_end__gt=now))
        .select_related("node__site")
        .order_by("pk")
    )
    offers: dict[int, engine.OfferState] = {}
    node_rows: dict[int, Node] = {}
    for offer in offers_qs:
        node = offer.node
        if node.site is None:
            continue
        node_rows[node.pk] = node
        offers[offer.pk] = engine.OfferState(
            offer_id=offer.pk,
            node_id=node.pk,
            gpu_model=offer.gpu_model,
            gpu_count=offer.gpu_count,
            price=offer.price_per_gpu_hour_micros,
            currency=offer.currency,
            kind=offer.kind,
            window_end=_epoch(offer.window_end),
            min_lease_seconds=offer.min_lease_seconds,
            max_lease_seconds=offer.max_lease_seconds,
        )
    gpus: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for gpu_id, node_id, model in (
        Gpu.objects.filter(node_id__in=list(node_rows), present=True)
        .order_by("pk")
        .values_list("pk", "node_id", "model")
    ):
        gpus[node_id].append((gpu_id, model))
    nodes = [
        engine.NodeState(
            node_id=node.pk,
            provider_id=node.organization_id,
            site_id=node.site_id or 0,
            region=node.site.region if node.site else "",
            country=node.site.country if node.site else "",
            reliability=node.reliability_score,
            gpus=tuple(gpus[node.pk]),
        )
        for node in sorted(node_rows.values(), key=lambda n: n.pk)
    ]
    lease_gpus: dict[int, list[int]] = defaultdict(list)
    for lease_id, gpu_id in (
        LeaseGpu.objects.filter(live=True).order_by("gpu_id").values_list("lease_id", "gpu_id")
    ):
        lease_gpus[lease_id].append(gpu_id)
    leases = [
        engine.LeaseState(
            lease_id=lease.pk,
            offer_id=lease.offer_id,
            node_id=lease.node_id,
            gpu_ids=tuple(lease_gpus[lease.pk]),
            kind=lease.kind,
            price=lease.price_per_gpu_hour_micros,
            started_at=_epoch(lease.started_at or lease.created_at) or 0.0,
            preempting_for=lease.preempted_for_id,
        )
        for lease in Lease.objects.filter(state__in=Lease.LIVE_STATES).order_by("pk")
    ]
    pledged = set(
        Lease.objects.filter(
            preempted_for__state=Order.State.OPEN, preempted_for__isnull=False
        ).values_list("preempted_for_id", flat=True)
    )
    orders = [
        _order_state(order, now, order.pk in pledged)
        for order in Order.objects.filter(
            state=Order.State.OPEN, earliest_start__lte=now, currency=currency
        ).order_by("pk")
    ]
    snapshot = engine.Snapshot(
        orders=orders, offers=list(offers.values()), nodes=nodes, leases=leases, models=MODEL_SPECS
    )
    return snapshot, offers


def _order_state(order: Order, now: datetime, pledged: bool = False) -> engine.OrderState:
    return engine.OrderState(
        order_id=order.pk,
        seq=order.pk,
        limit_price=order.limit_price_per_gpu_hour_micros,
        currency=order.currency,
        kind=order.kind,
        gpu_models=frozenset(order.gpu_models),
        gpus_per_node=order.gpus_per_node,
        node_count=order.node_count,
        min_memory_gib=order.min_gpu_memory_gib,
        interconnect=order.interconnect or None,
        regions=frozenset(order.regions) if order.regions else None,
        countries=frozenset(order.countries) if order.countries else None,
        min_reliability=order.min_reliability,
        duration_seconds=order.remaining_seconds or order.duration_seconds,
        start=now.timestamp(),
        deadline=_epoch(order.deadline),
        pledged=pledged,
    )


# --- tenants' reads -----------------------------------------------------------


def _with_gpus(leases: QuerySet[Lease]) -> QuerySet[Lease]:
    return leases.prefetch_related(
        Prefetch("gpus", queryset=LeaseGpu.objects.order_by("gpu_uuid"), to_attr="gpu_rows")
    )


def orders_for_org(*, organization: Organization, state: str | None = None) -> QuerySet[Order]:
    orders = Order.objects.filter(organization=organization)
    return orders.filter(state=state) if state else orders


def order_get(*, organization: Organization, order_id: int) -> Order:
    order = Order.objects.filter(organization=organization, pk=order_id).first()
    if order is None:
        raise NotFound(f"order {order_id} not found")
    return order


def leases_for_org(
    *, organization: Organization, order_id: int | None = None, state: str | None = None
) -> QuerySet[Lease]:
    leases = Lease.objects.filter(organization=organization)
    if order_id is not None:
        leases = leases.filter(order_id=order_id)
    if state:
        leases = leases.filter(state=state)
    return _with_gpus(leases)


def lease_get(*, organization: Organization, lease_id: int) -> Lease:
    lease = _with_gpus(Lease.objects.filter(organization=organization, pk=lease_id)).first()
    if lease is None:
        raise NotFound(f"lease {lease_id} not found")
    return lease


def leases_on_provider(*, provider: Organization, state: str | None = None) -> QuerySet[Lease]:
    """Leases on a provider's GPUs (the buyer is not named to the provider)."""
    leases = Lease.objects.filter(provider=provider)
    return _with_gpus(leases.filter(state=state) if state else leases)


def gpu_seconds_leased(*, provider: Organization, since: datetime, until: datetime) -> int:
    """GPU-seconds of leases on a provider's GPUs that fall inside ``[since, until)``:
    each lease's GPU count times the part of its run (started to ended, or to
    ``until`` while it runs) inside the period. One query."""
    runs = (
        Lease.objects.filter(provider=provider, started_at__isnull=False, started_at__lt=until)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=since))
        .values_list("gpu_count", "started_at", "ended_at")
    )
    total = 0
    for gpu_count, started_at, ended_at in runs:
        assert started_at is not None  # filtered on above
        start = max(started_at, since)
        end = min(ended_at or until, until)
        if end > start:
            total += gpu_count * int((end - start).total_seconds())
    return total


# --- the market view ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarketLine:
    gpu_model: str
    name: str
    kind: str
    currency: str
    offers: int
    providers: int
    regions: list[str]
    gpus_listed: int
    gpus_free: int
    price_min_micros: int
    price_max_micros: int
    price_median_micros: int


def market_lines(*, now: datetime | None = None) -> list[MarketLine]:
    """Live offers by GPU model and kind: counts, free GPUs and price range. Providers
    are counted, never named."""
    snapshot, _ = market_snapshot(now=now)
    free = engine.free_gpus_by_offer(snapshot)
    nodes = {node.node_id: node for node in snapshot.nodes}
    groups: dict[tuple[str, str, str], list[engine.OfferState]] = defaultdict(list)
    for offer in snapshot.offers:
        groups[(offer.gpu_model, offer.kind, offer.currency)].append(offer)
    lines = []
    for (slug, kind, currency), offers in sorted(groups.items()):
        prices = sorted(o.price for o in offers)
        model = catalog.model_get(slug)
        lines.append(
            MarketLine(
                gpu_model=slug,
                name=model.name if model else slug,
                kind=kind,
                currency=currency,
                offers=len(offers),
                providers=len({nodes[o.node_id].provider_id for o in offers}),
                regions=sorted({nodes[o.node_id].region for o in offers}),
                gpus_listed=sum(o.gpu_count for o in offers),
                gpus_free=sum(free.get(o.offer_id, 0) for o in offers),
                price_min_micros=prices[0],
                price_max_micros=prices[-1],
                price_median_micros=prices[(len(prices) - 1) // 2],
            )
        )
    return lines


# --- the buyer's usage report (the portal's usage page) ---------------------------
# A buyer's usage by day and product over a period, with what it cost: the rows of
# the console's usage page and of its CSV download (the same rows).
#
# A row is one UTC day, one product and one model. Products:
#
# - **Tokens** metered for the organization: fine-tunes' training and evaluation
#   tokens, inference's input and output tokens, by model (base or fine-tuned), summed
#   in one SQL query. Cost is the price book's rate (``billing.pricing.rate_for``, the
#   function rating uses, at the row's first use) applied to the row's total with
#   rating's own arithmetic (``rate_quantity``, half-even to a micro-unit). Rating
#   rounds each event alone, so a row can differ from the ledger by under one
#   micro-unit per event it sums; invoices carry the ledger's amounts.
# - **GPU time** of the organization's raw leases, as billed: a lease settles its own
#   GPU-seconds through its credit hold (the lease price plus the platform fee), and
#   rating leaves the GPU-seconds metered for it alone, so the amounts here are the
#   leases' own (``gpu_seconds_billed``, ``billed_micros``), by GPU model, on the day
#   of ``billed_until`` (the end of the time settled so far), as the Together-shaped
#   usage report (marketplace.together.usage) reports them. Managed leases (fine-tunes,
#   inference) are paid per token, so their GPU time is not a product here.

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
