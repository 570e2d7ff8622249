"""Reads of the marketplace: the engine's snapshot of the market, each tenant's
orders and leases, the leases on a provider's GPUs, and the public market view."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from core.errors import NotFound
from core.models import Organization
from marketplace import engine
from marketplace.models import Lease, LeaseGpu, Order
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
