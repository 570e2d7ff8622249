"""Property tests of the pure engine: no GPU twice, every allocation within its
order's constraints and limit, gangs all or nothing, the same answer every time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace import engine
from marketplace.engine import (
    INTERRUPTIBLE,
    ON_DEMAND,
    LeaseState,
    ModelSpec,
    NodeState,
    OfferState,
    OrderState,
    Snapshot,
)

MODELS = {
    "h100": ModelSpec(80, "nvlink"),
    "a100": ModelSpec(40, "nvlink"),
    "l40s": ModelSpec(48, "pcie"),
}
REGIONS = ["us-east", "eu-central"]
NOW = 1_000_000.0


@st.composite
def snapshots(draw) -> Snapshot:
    nodes, offers, leases = [], [], []
    gpu_id = 0
    for node_id in range(1, draw(st.integers(1, 8)) + 1):
        model = draw(st.sampled_from(sorted(MODELS)))
        count = draw(st.integers(1, 8))
        gpus = tuple((gpu_id + i, model) for i in range(count))
        gpu_id += count
        region = draw(st.sampled_from(REGIONS))
        nodes.append(
            NodeState(
                node_id,
                provider_id=node_id % 3,
                site_id=node_id % 2,
                region=region,
                country="US" if region == "us-east" else "DE",
                reliability=draw(st.none() | st.floats(0.5, 1.0)),
                gpus=gpus,
            )
        )
        listed = draw(st.integers(1, count))
        kind = draw(st.sampled_from([ON_DEMAND, INTERRUPTIBLE]))
        offer_id = node_id * 10
        offers.append(
            OfferState(
                offer_id,
                node_id,
                model,
                listed,
                price=draw(st.integers(1, 5)) * 1_000_000,
                currency="USD",
                kind=kind,
                window_end=draw(st.none() | st.just(NOW + 7200)),
                min_lease_seconds=draw(st.sampled_from([60, 3600])),
                max_lease_seconds=draw(st.none() | st.just(7200)),
            )
        )
        if draw(st.booleans()):
            taken = draw(st.integers(1, listed))
            leases.append(
                LeaseState(
                    node_id,
                    offer_id,
                    node_id,
                    tuple(g for g, _ in gpus[:taken]),
                    kind=draw(st.sampled_from([ON_DEMAND, INTERRUPTIBLE])),
                    price=1_000_000,
                    started_at=NOW - 100,
                )
            )
    orders = []
    for order_id in range(1, draw(st.integers(1, 25)) + 1):
        orders.append(
            OrderState(
                order_id,
                seq=draw(st.integers(0, 100)),
                limit_price=draw(st.integers(1, 6)) * 1_000_000,
                currency="USD",
                kind=draw(st.sampled_from([ON_DEMAND, INTERRUPTIBLE])),
                gpu_models=frozenset(draw(st.sets(st.sampled_from(sorted(MODELS)), min_size=1))),
                gpus_per_node=draw(st.integers(1, 8)),
                node_count=draw(st.sampled_from([1, 1, 1, 2, 3])),
                min_memory_gib=draw(st.sampled_from([0, 0, 48, 80])),
                interconnect=draw(st.sampled_from([None, None, "nvlink", "pcie"])),
                regions=draw(st.none() | st.just(frozenset({"us-east"}))),
                countries=draw(st.none() | st.just(frozenset({"DE"}))),
                min_reliability=draw(st.none() | st.floats(0.5, 1.0)),
                duration_seconds=draw(st.sampled_from([None, 600, 3600, 10_000])),
                start=NOW,
                deadline=draw(st.none() | st.just(NOW + 5000)),
            )
        )
    return Snapshot(orders, offers, nodes, leases, MODELS)


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_allocations_respect_every_constraint_and_never_share_a_gpu(snapshot):
    result = engine.match(snapshot)
    orders = {o.order_id: o for o in snapshot.orders}
    offers = {o.offer_id: o for o in snapshot.offers}
    nodes = {n.node_id: n for n in snapshot.nodes}
    gpu_model = {gpu: model for n in snapshot.nodes for gpu, model in n.gpus}
    used = {gpu for lease in snapshot.leases for gpu in lease.gpu_ids}
    per_offer: dict[int, int] = {}
    for lease in snapshot.leases:
        per_offer[lease.offer_id] = per_offer.get(lease.offer_id, 0) + len(lease.gpu_ids)
    seen_orders = set()
    for allocation in result.allocations:
        order = orders[allocation.order_id]
        assert allocation.order_id not in seen_orders
        seen_orders.add(allocation.order_id)
        # gangs: all or nothing, distinct nodes of one site
        assert len(allocation.placements) == order.node_count
        assert len({p.node_id for p in allocation.placements}) == order.node_count
        assert len({nodes[p.node_id].site_id for p in allocation.placements}) == 1
        for placement in allocation.placements:
            offer, node = offers[placement.offer_id], nodes[placement.node_id]
            spec = MODELS[offer.gpu_model]
            assert len(placement.gpu_ids) == order.gpus_per_node
            assert placement.price == offer.price <= order.limit_price
            assert offer.gpu_model in order.gpu_models
            assert spec.memory_gib >= order.min_memory_gib
            assert order.interconnect in (None, spec.interconnect)
            assert order.regions is None or node.region in order.regions
            assert order.countries is None or node.country in order.countries
            if order.min_reliability is not None:
                assert node.reliability is not None
                assert node.reliability >= order.min_reliability
            if order.kind == INTERRUPTIBLE:
                assert offer.kind == INTERRUPTIBLE
            if order.duration_seconds is None:
                assert offer.window_end is None and offer.max_lease_seconds is None
            else:
                end = order.start + order.duration_seconds
                assert offer.window_end is None or end <= offer.window_end
                assert order.deadline is None or end <= order.deadline
                assert order.duration_seconds >= offer.min_lease_seconds
            for gpu in placement.gpu_ids:
                assert gpu not in used, "GPU allocated twice"
                used.add(gpu)
                assert gpu_model[gpu] == offer.gpu_model
                assert gpu in {g for g, _ in node.gpus}
            per_offer[offer.offer_id] = per_offer.get(offer.offer_id, 0) + order.gpus_per_node
            assert per_offer[offer.offer_id] <= offer.gpu_count


@settings(max_examples=100, deadline=None)
@given(snapshots())
def test_the_same_snapshot_gives_the_same_answer(snapshot):
    reordered = Snapshot(
        list(reversed(snapshot.orders)),
        list(reversed(snapshot.offers)),
        list(reversed(snapshot.nodes)),
        list(reversed(snapshot.leases)),
        snapshot.models,
    )
    assert engine.match(snapshot) == engine.match(snapshot) == engine.match(reordered)


@settings(max_examples=100, deadline=None)
@given(snapshots())
def test_preemptions_take_only_interruptible_leases_for_on_demand_orders(snapshot):
    result = engine.match(snapshot)
    leases = {lease.lease_id: lease for lease in snapshot.leases}
    orders = {o.order_id: o for o in snapshot.orders}
    offers = {o.offer_id: o for o in snapshot.offers}
    matched = {a.order_id for a in result.allocations}
    victims: set[int] = set()
    for preemption in result.preemptions:
        order = orders[preemption.order_id]
        assert order.kind == ON_DEMAND and preemption.order_id not in matched
        assert offers[preemption.offer_id].price <= order.limit_price
        for lease_id in preemption.lease_ids:
            assert leases[lease_id].kind == INTERRUPTIBLE
            assert leases[lease_id].offer_id == preemption.offer_id
            assert lease_id not in victims
            victims.add(lease_id)


def test_best_fit_keeps_a_whole_node_for_a_whole_node_gang():
    nodes = [
        NodeState(1, 1, 1, "us-east", "US", 0.9, tuple((i, "h100") for i in range(8))),
        NodeState(2, 1, 1, "us-east", "US", 0.9, tuple((10 + i, "h100") for i in range(2))),
    ]
    offers = [
        OfferState(1, 1, "h100", 8, 2_000_000, "USD", ON_DEMAND, None, 60, None),
        OfferState(2, 2, "h100", 2, 2_500_000, "USD", ON_DEMAND, None, 60, None),
    ]
    small = OrderState(1, 1, 3_000_000, "USD", ON_DEMAND, frozenset({"h100"}), 2, start=NOW)
    whole = OrderState(2, 2, 3_000_000, "USD", ON_DEMAND, frozenset({"h100"}), 8, start=NOW)
    result = engine.match(Snapshot([small, whole], offers, nodes, [], MODELS))
    placed = {a.order_id: a.placements[0].node_id for a in result.allocations}
    # the 2-GPU order takes the 2-GPU node though it costs more; the 8-GPU gang fits
    assert placed == {1: 2, 2: 1}


def test_equal_price_goes_to_the_more_reliable_node():
    nodes = [
        NodeState(1, 1, 1, "us-east", "US", 0.80, ((1, "h100"),)),
        NodeState(2, 2, 2, "us-east", "US", 0.99, ((2, "h100"),)),
    ]
    offers = [
        OfferState(1, 1, "h100", 1, 2_000_000, "USD", ON_DEMAND, None, 60, None),
        OfferState(2, 2, "h100", 1, 2_000_000, "USD", ON_DEMAND, None, 60, None),
    ]
    order = OrderState(1, 1, 2_000_000, "USD", ON_DEMAND, frozenset({"h100"}), 1, start=NOW)
    [allocation] = engine.match(Snapshot([order], offers, nodes, [], MODELS)).allocations
    assert allocation.placements[0].node_id == 2
