"""The matching engine: a pure, deterministic function from a snapshot of the market
(open orders, live offers, nodes and their free GPUs, current leases) to allocations
and preemptions. No Django, no database, no clock: ``services.matching_round`` builds
the snapshot, calls ``match`` and writes the result; tests and ``bench/matching.py``
call it directly.

Rules
-----

- **Price-time priority.** Orders are served one at a time, highest limit price per
  GPU-hour first, then the earliest placed (``seq``), then the lowest id — except
  that an order which preempted leases is served first (``pledged``): the GPUs it
  freed are its own.
- **Limits.** An order only matches an offer whose price is at or below its limit.
- **Pay-as-ask.** The lease price is the offer's own price. Why not a uniform
  clearing price (every trade in a round at the price of the marginal offer)? The
  book here is continuous and heterogeneous: orders arrive one at a time, want
  different shapes (models, regions, gangs, durations) and start now, so there is no
  single market to clear per round, and a buyer sees the price of the GPUs they get
  the moment they get them. Pay-as-ask also keeps each trade individually rational
  with no surplus to distribute. A uniform price would pay every provider in a
  homogeneous pool the marginal price (more for the cheap ones: an incentive to list
  at cost, as in electricity markets), charge every buyer the same, and need a call
  auction — batching orders per interval and solving for the price — which would
  delay matches by up to an interval and make the price depend on which orders
  happened to share a batch.
- **Constraints**, all exact: acceptable GPU models (the service expands "class ≥ X"
  from the catalog), minimum GPU memory and interconnect (from the model spec),
  region and country, minimum node reliability, the offer's kind (interruptible
  orders take interruptible offers only; on-demand orders take either, and a lease
  of an on-demand order is never preempted), the offer's window (the lease must end
  before it, open-ended leases need an open-ended offer), the offer's minimum and
  maximum lease length, the order's deadline (its lease must end by then), currency,
  and gang shape: ``node_count`` distinct nodes of one site with ``gpus_per_node``
  GPUs each, all or nothing.
- **Best fit.** Among feasible placements the one leaving the fewest GPUs free on the
  node wins (keep whole 8-GPU nodes for 8-GPU gangs); then the lower price, then the
  more reliable node, then the lower offer id. Putting waste before price means a
  buyer may pay more than the cheapest wasteful placement would cost, never more than
  their limit; it is what keeps large gangs placeable.
- **No GPU twice.** A GPU in a live lease is never free; every allocation takes
  GPUs from the node's free list and removes them. The database refuses the same
  again (a unique index on live lease GPUs), so two matchers cannot double-allocate.
- **Preemption.** An on-demand order that found nothing may preempt interruptible
  leases of an interruptible offer whose price is at or below its limit, on one node,
  when that frees enough of the offer's GPUs. Victims: the cheapest, then the most
  recently started (the least work lost). The victims get the offer's grace period;
  the order takes the GPUs in a later round once they are free. An order with a
  preemption in flight does not preempt again. Multi-node gangs do not preempt.

Complexity: offers are indexed by (model, kind, region) and, within that, by the
number of GPUs they can still give, each bucket sorted by (price, -reliability, id).
An order scans buckets from its gang size upwards and stops at the first fit, so a
round costs roughly O(orders x models x regions x 8) plus the scans past offers that
fail a constraint. A failed order's constraint signature is remembered: capacity only
shrinks within a round, so a later order with the same signature and a limit no
higher cannot fit either.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

ON_DEMAND = "on_demand"
INTERRUPTIBLE = "interruptible"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    memory_gib: int
    interconnect: str  # nvlink | pcie


@dataclass(frozen=True, slots=True)
class NodeState:
    node_id: int
    provider_id: int
    site_id: int
    region: str
    country: str
    reliability: float | None  # None: not scored yet (fails any minimum)
    gpus: tuple[tuple[int, str], ...]  # (gpu id, model slug) of present GPUs


@dataclass(frozen=True, slots=True)
class OfferState:
    offer_id: int
    node_id: int
    gpu_model: str
    gpu_count: int
    price: int  # micro-units per GPU-hour
    currency: str
    kind: str  # on_demand | interruptible
    window_end: float | None  # epoch seconds; None: open-ended
    min_lease_seconds: int
    max_lease_seconds: int | None


@dataclass(frozen=True, slots=True)
class LeaseState:
    lease_id: int
    offer_id: int
    node_id: int
    gpu_ids: tuple[int, ...]
    kind: str  # the lease's own kind: interruptible leases may be preempted
    price: int
    started_at: float
    preempting_for: int | None = None  # order id, while a preemption is in flight


@dataclass(frozen=True, slots=True)
class OrderState:
    order_id: int
    seq: int  # placement order (earlier first at equal price)
    limit_price: int
    currency: str
    kind: str
    gpu_models: frozenset[str]
    gpus_per_node: int
    node_count: int = 1
    min_memory_gib: int = 0
    interconnect: str | None = None
    regions: frozenset[str] | None = None
    countries: frozenset[str] | None = None
    min_reliability: float | None = None
    duration_seconds: int | None = None  # None: open-ended
    start: float = 0.0  # when its lease would start (epoch seconds)
    deadline: float | None = None  # its lease must end by then
    # It preempted leases and is waiting for (or just got) their GPUs: served first,
    # or a higher bid would take what the preemption freed and the next round would
    # preempt again.
    pledged: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    orders: Sequence[OrderState]
    offers: Sequence[OfferState]
    nodes: Sequence[NodeState]
    leases: Sequence[LeaseState]
    models: Mapping[str, ModelSpec]


@dataclass(frozen=True, slots=True)
class Placement:
    offer_id: int
    node_id: int
    gpu_ids: tuple[int, ...]
    price: int


@dataclass(frozen=True, slots=True)
class Allocation:
    order_id: int
    placements: tuple[Placement, ...]  # one per node of the gang


@dataclass(frozen=True, slots=True)
class Preemption:
    order_id: int
    offer_id: int
    node_id: int
    lease_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MatchResult:
    allocations: tuple[Allocation, ...]
    preemptions: tuple[Preemption, ...]


# --- the mutable working state of one round ---------------------------------


@dataclass(slots=True)
class _Offer:
    state: OfferState
    node: NodeState
    remaining: int  # the offer's GPUs not in live leases
    rank: tuple[int, float, int] = (0, 0.0, 0)  # (price, -reliability, id)
    free: int = 0  # what it can give now: min(remaining, node's free GPUs of its model)


@dataclass(slots=True)
class _Index:
    """Offers by (model, kind, region) → free count → sorted ranks."""

    buckets: dict[tuple[str, str, str], dict[int, list[tuple[int, float, int]]]] = field(
        default_factory=dict
    )
    regions_of: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add(self, offer: _Offer) -> None:
        if offer.free <= 0:
            return
        key = (offer.state.gpu_model, offer.state.kind, offer.node.region)
        by_free = self.buckets.get(key)
        if by_free is None:
            by_free = self.buckets[key] = {}
            regions = self.regions_of.setdefault(key[:2], [])
            insort(regions, key[2])
        insort(by_free.setdefault(offer.free, []), offer.rank)

    def remove(self, offer: _Offer) -> None:
        if offer.free <= 0:
            return
        key = (offer.state.gpu_model, offer.state.kind, offer.node.region)
        bucket = self.buckets[key][offer.free]
        del bucket[bisect_left(bucket, offer.rank)]


def _order_key(order: OrderState) -> tuple[bool, int, int, int]:
    return (not order.pledged, -order.limit_price, order.seq, order.order_id)


def _signature(order: OrderState) -> tuple:
    return (
        order.currency,
        order.kind,
        order.gpu_models,
        order.gpus_per_node,
        order.node_count,
        order.min_memory_gib,
        order.interconnect,
        order.regions,
        order.countries,
        order.min_reliability,
        order.duration_seconds,
        order.start,
        order.deadline,
    )


class _Round:
    def __init__(self, snapshot: Snapshot) -> None:
        self.models = snapshot.models
        nodes = {node.node_id: node for node in snapshot.nodes}
        leased: set[int] = set()
        on_offer: dict[int, int] = {}
        for lease in snapshot.leases:
            leased.update(lease.gpu_ids)
            on_offer[lease.offer_id] = on_offer.get(lease.offer_id, 0) + len(lease.gpu_ids)
        # Free GPUs per (node, model), lowest id first.
        self.free_gpus: dict[tuple[int, str], list[int]] = {}
        for node in sorted(nodes.values(), key=lambda n: n.node_id):
            for gpu_id, model in sorted(node.gpus):
                if gpu_id not in leased:
                    self.free_gpus.setdefault((node.node_id, model), []).append(gpu_id)
        self.offers: dict[int, _Offer] = {}
        self.on_node: dict[tuple[int, str], list[_Offer]] = {}
        self.index = _Index()
        for state in sorted(snapshot.offers, key=lambda o: o.offer_id):
            owner = nodes.get(state.node_id)
            if owner is None:
                continue  # node not eligible (unhealthy, unknown)
            offer = _Offer(state, owner, max(0, state.gpu_count - on_offer.get(state.offer_id, 0)))
            offer.rank = (state.price, -(owner.reliability or 0.0), state.offer_id)
            offer.free = self._free_for(offer)
            self.offers[state.offer_id] = offer
            self.on_node.setdefault((state.node_id, state.gpu_model), []).append(offer)
            self.index.add(offer)
        self.max_gang = max((o.free for o in self.offers.values()), default=0)
        self.leases = sorted(snapshot.leases, key=lambda lease: lease.lease_id)
        self.failed: dict[tuple, int] = {}

    def _free_for(self, offer: _Offer) -> int:
        node_free = len(self.free_gpus.get((offer.state.node_id, offer.state.gpu_model), ()))
        return min(offer.remaining, node_free)

    # --- feasibility ---------------------------------------------------------

    def _models_for(self, order: OrderState) -> list[str]:
        found = []
        for slug in sorted(order.gpu_models):
            spec = self.models.get(slug)
            if spec is None or spec.memory_gib < order.min_memory_gib:
                continue
            if order.interconnect is not None and spec.interconnect != order.interconnect:
                continue
            found.append(slug)
        return found

    @staticmethod
    def _kinds_for(order: OrderState) -> tuple[str, ...]:
        return (ON_DEMAND, INTERRUPTIBLE) if order.kind == ON_DEMAND else (INTERRUPTIBLE,)

    @staticmethod
    def fits(order: OrderState, offer: OfferState, node: NodeState) -> bool:
        """Every constraint but capacity and region (the index keys on region)."""
        if offer.price > order.limit_price or offer.currency != order.currency:
            return False
        if order.min_reliability is not None and (
            node.reliability is None or node.reliability < order.min_reliability
        ):
            return False
        if order.countries is not None and node.country not in order.countries:
            return False
        duration = order.duration_seconds
        if duration is None:
            return offer.window_end is None and offer.max_lease_seconds is None
        if duration < offer.min_lease_seconds:
            return False
        if offer.max_lease_seconds is not None and duration > offer.max_lease_seconds:
            return False
        end = order.start + duration
        if offer.window_end is not None and end > offer.window_end:
            return False
        return not (order.deadline is not None and end > order.deadline)

    def _keys(self, order: OrderState) -> list[tuple[str, str, str]]:
        keys = []
        for model in self._models_for(order):
            for kind in self._kinds_for(order):
                for region in self.index.regions_of.get((model, kind), ()):
                    if order.regions is None or region in order.regions:
                        keys.append((model, kind, region))
        return keys

    def _best_in(
        self, order: OrderState, key: tuple[str, str, str], free: int
    ) -> tuple[int, float, int] | None:
        bucket = self.index.buckets[key].get(free)
        if not bucket:
            return None
        for rank in bucket:
            if rank[0] > order.limit_price:
                return None  # sorted by price: nothing further is within the limit
            offer = self.offers[rank[2]]
            if self.fits(order, offer.state, offer.node):
                return rank
        return None

    # --- placing ---------------------------------------------------------------

    def place_single(self, order: OrderState) -> Placement | None:
        need = order.gpus_per_node
        keys = self._keys(order)
        for free in range(need, self.max_gang + 1):
            best = None
            for key in keys:
                rank = self._best_in(order, key, free)
                if rank is not None and (best is None or rank < best):
                    best = rank
            if best is not None:
                return self._take(self.offers[best[2]], need)
        return None

    def place_gang(self, order: OrderState) -> tuple[Placement, ...] | None:
        need = order.gpus_per_node
        per_site: dict[int, dict[int, tuple]] = {}
        for key in self._keys(order):
            for free, bucket in self.index.buckets[key].items():
                if free < need:
                    continue
                for rank in bucket:
                    if rank[0] > order.limit_price:
                        break
                    offer = self.offers[rank[2]]
                    if not self.fits(order, offer.state, offer.node):
                        continue
                    candidate = (free - need, *rank)
                    site = per_site.setdefault(offer.node.site_id, {})
                    current = site.get(offer.node.node_id)
                    if current is None or candidate < current:
                        site[offer.node.node_id] = candidate
        best_site = None
        for site_id in sorted(per_site):
            chosen = sorted(per_site[site_id].values())[: order.node_count]
            if len(chosen) < order.node_count:
                continue
            score = (sum(c[0] for c in chosen), sum(c[1] for c in chosen), site_id)
            if best_site is None or score < best_site[0]:
                best_site = (score, chosen)
        if best_site is None:
            return None
        return tuple(self._take(self.offers[c[3]], need) for c in best_site[1])

    def _take(self, offer: _Offer, count: int) -> Placement:
        key = (offer.state.node_id, offer.state.gpu_model)
        free = self.free_gpus[key]
        taken, self.free_gpus[key] = tuple(free[:count]), free[count:]
        siblings = self.on_node[key]
        for sibling in siblings:
            self.index.remove(sibling)
        offer.remaining -= count
        for sibling in siblings:
            sibling.free = self._free_for(sibling)
            self.index.add(sibling)
        return Placement(offer.state.offer_id, offer.state.node_id, taken, offer.state.price)

    # --- preempting ---------------------------------------------------------------

    def preempt(self, order: OrderState, claimed: set[int]) -> Preemption | None:
        if order.kind != ON_DEMAND or order.node_count != 1:
            return None
        need = order.gpus_per_node
        models = set(self._models_for(order))
        victims_by_offer: dict[int, list[LeaseState]] = {}
        for lease in self.leases:
            free_to_take = lease.preempting_for is None and lease.lease_id not in claimed
            if lease.kind == INTERRUPTIBLE and free_to_take:
                victims_by_offer.setdefault(lease.offer_id, []).append(lease)
        best = None
        for offer_id in sorted(victims_by_offer):
            offer = self.offers.get(offer_id)
            if offer is None or offer.state.kind != INTERRUPTIBLE:
                continue
            state, node = offer.state, offer.node
            if state.gpu_model not in models or not self.fits(order, state, node):
                continue
            if order.regions is not None and node.region not in order.regions:
                continue
            node_free = len(self.free_gpus.get((state.node_id, state.gpu_model), ()))
            victims = sorted(victims_by_offer[offer_id], key=lambda v: (v.price, -v.started_at))
            chosen: list[LeaseState] = []
            freed = 0
            for victim in victims:
                if min(offer.remaining, node_free) + freed >= need:
                    break
                chosen.append(victim)
                freed += len(victim.gpu_ids)
            if not chosen or min(offer.remaining + freed, node_free + freed) < need:
                continue
            score = (freed, state.price, -(node.reliability or 0.0), offer_id)
            if best is None or score < best[0]:
                best = (score, offer, tuple(v.lease_id for v in chosen))
        if best is None:
            return None
        _, offer, lease_ids = best
        claimed.update(lease_ids)
        return Preemption(order.order_id, offer.state.offer_id, offer.state.node_id, lease_ids)


def match(snapshot: Snapshot) -> MatchResult:
    """Allocations and preemptions for one round; the same snapshot always gives the
    same result."""
    work = _Round(snapshot)
    allocations: list[Allocation] = []
    unmatched: list[OrderState] = []
    for order in sorted(snapshot.orders, key=_order_key):
        if order.gpus_per_node < 1 or order.node_count < 1:
            continue
        signature = _signature(order)
        failed_at = work.failed.get(signature)
        if failed_at is not None and order.limit_price <= failed_at:
            unmatched.append(order)
            continue
        placements: tuple[Placement, ...] | None
        if order.gpus_per_node > work.max_gang:
            placements = None
        elif order.node_count == 1:
            single = work.place_single(order)
            placements = (single,) if single is not None else None
        else:
            placements = work.place_gang(order)
        if placements is None:
            work.failed[signature] = max(failed_at or 0, order.limit_price)
            unmatched.append(order)
        else:
            allocations.append(Allocation(order.order_id, placements))
    pending = {lease.preempting_for for lease in snapshot.leases if lease.preempting_for}
    claimed: set[int] = set()
    preemptions = []
    for order in unmatched:
        if order.order_id in pending:
            continue
        found = work.preempt(order, claimed)
        if found is not None:
            preemptions.append(found)
    return MatchResult(tuple(allocations), tuple(preemptions))


def free_gpu_count(snapshot: Snapshot) -> int:
    """GPUs on eligible nodes not in a live lease (for reports and tests)."""
    leased = {gpu for lease in snapshot.leases for gpu in lease.gpu_ids}
    return sum(1 for node in snapshot.nodes for gpu, _ in node.gpus if gpu not in leased)


def orders_by_priority(orders: Iterable[OrderState]) -> list[OrderState]:
    return sorted(orders, key=_order_key)


def free_gpus_by_offer(snapshot: Snapshot) -> dict[int, int]:
    """GPUs each offer could give now (its GPUs not leased, within its node's free)."""
    work = _Round(snapshot)
    return {offer_id: offer.free for offer_id, offer in work.offers.items()}
