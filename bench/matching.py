"""Matching engine benchmark: ``python bench/matching.py [--quick]``.

1. Throughput: a synthetic market of 5,000 nodes (mixed GPU models, 1-8 GPUs each,
   one offer per node, on-demand and interruptible, four regions) and 50,000 orders
   (mixed models, "class >= X" sets, gang sizes 1-8 GPUs, some 2-4 node gangs, regions,
   reliability floors, durations, limits). One ``engine.match`` call end to end, one
   core; allocations per second. Baseline in the same run: a plain first-fit matcher
   (every order scans every offer, same constraints, no index) on the first orders.
2. Quality: 200 nodes x 2,000 single-node orders; matched GPU-hours of the engine
   against the optimum found by scipy.optimize.milp (HiGHS) for the same feasibility
   (an order on a node whose offer it fits; each order at most once; GPUs per node).

Ends with one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marketplace import engine  # pure: no Django needed
from marketplace.engine import (
    INTERRUPTIBLE,
    ON_DEMAND,
    ModelSpec,
    NodeState,
    OfferState,
    OrderState,
    Snapshot,
)

MODELS = {
    "b200": (ModelSpec(180, "nvlink"), 5_500_000),
    "h200": (ModelSpec(141, "nvlink"), 3_600_000),
    "h100": (ModelSpec(80, "nvlink"), 2_500_000),
    "a100": (ModelSpec(80, "nvlink"), 1_300_000),
    "l40s": (ModelSpec(48, "pcie"), 900_000),
    "a10": (ModelSpec(24, "pcie"), 500_000),
}
ORDERED = ["b200", "h200", "h100", "a100", "l40s", "a10"]  # fastest first
REGIONS = ["us-east", "us-west", "eu-central", "ap-south"]
NOW = 1_800_000_000.0


def market(
    nodes: int, orders: int, seed: int, *, gangs: bool = True, duration: int | None = None
) -> Snapshot:
    rnd = random.Random(seed)
    node_states, offers = [], []
    gpu = 0
    for node_id in range(1, nodes + 1):
        model = rnd.choices(ORDERED, weights=[1, 2, 5, 5, 3, 2])[0]
        count = rnd.choice([1, 2, 4, 4, 8, 8, 8])
        region = rnd.choice(REGIONS)
        node_states.append(
            NodeState(
                node_id,
                provider_id=node_id % 97,
                site_id=node_id % 400,
                region=region,
                country=region[:2].upper(),
                reliability=round(rnd.uniform(0.85, 1.0), 3),
                gpus=tuple((gpu + i, model) for i in range(count)),
            )
        )
        gpu += count
        base = MODELS[model][1]
        offers.append(
            OfferState(
                offer_id=node_id,
                node_id=node_id,
                gpu_model=model,
                gpu_count=count,
                price=int(base * rnd.uniform(0.8, 1.3)),
                currency="USD",
                kind=rnd.choice([ON_DEMAND, ON_DEMAND, INTERRUPTIBLE]),
                window_end=None if rnd.random() < 0.7 else NOW + rnd.choice([4, 12, 48]) * 3600,
                min_lease_seconds=rnd.choice([60, 600, 3600]),
                max_lease_seconds=None,
            )
        )
    order_states = []
    for order_id in range(1, orders + 1):
        floor = rnd.choices(ORDERED, weights=[1, 1, 4, 4, 3, 2])[0]
        models = ORDERED[: ORDERED.index(floor) + 1] if rnd.random() < 0.5 else [floor]
        gpus = rnd.choice([1, 1, 1, 2, 2, 4, 8])
        node_count = rnd.choice([2, 2, 4]) if gangs and gpus == 8 and rnd.random() < 0.2 else 1
        base = MODELS[floor][1]
        order_states.append(
            OrderState(
                order_id,
                seq=order_id,
                limit_price=int(base * rnd.uniform(0.8, 1.6)),
                currency="USD",
                kind=rnd.choice([ON_DEMAND, ON_DEMAND, INTERRUPTIBLE]),
                gpu_models=frozenset(models),
                gpus_per_node=gpus,
                node_count=node_count,
                regions=None if rnd.random() < 0.6 else frozenset(rnd.sample(REGIONS, 2)),
                min_reliability=None if rnd.random() < 0.7 else 0.9,
                duration_seconds=duration or rnd.choice([3600, 4 * 3600, 24 * 3600]),
                start=NOW,
            )
        )
    specs = {slug: spec for slug, (spec, _) in MODELS.items()}
    return Snapshot(order_states, offers, node_states, [], specs)


def first_fit(snapshot: Snapshot) -> int:
    """The baseline: each order (same priority) scans every offer for the first that
    fits and has room. Single-node orders only; no index, no best fit."""
    nodes = {n.node_id: n for n in snapshot.nodes}
    room = {o.offer_id: o.gpu_count for o in snapshot.offers}
    allocations = 0
    for order in engine.orders_by_priority(snapshot.orders):
        if order.node_count != 1:
            continue
        for offer in snapshot.offers:
            spec = snapshot.models[offer.gpu_model]
            if (
                room[offer.offer_id] >= order.gpus_per_node
                and offer.gpu_model in order.gpu_models
                and spec.memory_gib >= order.min_memory_gib
                and (order.regions is None or nodes[offer.node_id].region in order.regions)
                and (order.kind == ON_DEMAND or offer.kind == INTERRUPTIBLE)
                and engine._Round.fits(order, offer, nodes[offer.node_id])
            ):
                room[offer.offer_id] -= order.gpus_per_node
                allocations += 1
                break
    return allocations


def gpu_hours(snapshot: Snapshot, result: engine.MatchResult) -> float:
    orders = {o.order_id: o for o in snapshot.orders}
    return sum(
        orders[a.order_id].gpus_per_node
        * orders[a.order_id].node_count
        * (orders[a.order_id].duration_seconds or 0)
        / 3600
        for a in result.allocations
    )


def milp_optimum(snapshot: Snapshot, time_limit: float) -> tuple[float, str]:
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    nodes = {n.node_id: n for n in snapshot.nodes}
    pairs = []
    for i, order in enumerate(snapshot.orders):
        for j, offer in enumerate(snapshot.offers):
            node = nodes[offer.node_id]
            spec = snapshot.models[offer.gpu_model]
            if (
                offer.gpu_model in order.gpu_models
                and offer.gpu_count >= order.gpus_per_node
                and spec.memory_gib >= order.min_memory_gib
                and (order.regions is None or node.region in order.regions)
                and (order.kind == ON_DEMAND or offer.kind == INTERRUPTIBLE)
                and engine._Round.fits(order, offer, node)
            ):
                pairs.append((i, j))
    weights = np.array(
        [
            -snapshot.orders[i].gpus_per_node * (snapshot.orders[i].duration_seconds or 0) / 3600
            for i, _ in pairs
        ]
    )
    k = len(pairs)
    rows, cols, vals = [], [], []
    for col, (i, j) in enumerate(pairs):
        rows += [i, len(snapshot.orders) + j]
        cols += [col, col]
        vals += [1.0, float(snapshot.orders[i].gpus_per_node)]
    shape = (len(snapshot.orders) + len(snapshot.offers), k)
    matrix = coo_matrix((vals, (rows, cols)), shape=shape).tocsr()
    upper = np.array([1.0] * len(snapshot.orders) + [float(o.gpu_count) for o in snapshot.offers])
    solved = milp(
        c=weights,
        constraints=LinearConstraint(matrix, -np.inf, upper),
        integrality=np.ones(k),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit, "mip_rel_gap": 1e-6},
    )
    return -float(solved.fun), solved.message


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="500 nodes x 5,000 orders")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    nodes, orders = (500, 5_000) if args.quick else (5_000, 50_000)

    snapshot = market(nodes, orders, args.seed)
    started = time.process_time()
    result = engine.match(snapshot)
    elapsed = time.process_time() - started
    allocations = len(result.allocations)
    per_s = allocations / elapsed

    baseline_orders = 2_000 if args.quick else 5_000
    small = Snapshot(
        snapshot.orders[:baseline_orders], snapshot.offers, snapshot.nodes, [], snapshot.models
    )
    started = time.process_time()
    baseline_allocations = first_fit(small)
    baseline_elapsed = time.process_time() - started
    baseline_per_s = baseline_allocations / baseline_elapsed

    # Equal durations: matched GPU-hours measure how well placement packs GPUs.
    quality = market(200, 2_000, args.seed + 1, gangs=False, duration=4 * 3600)
    engine_hours = gpu_hours(quality, engine.match(quality))
    optimum, message = milp_optimum(quality, time_limit=60 if args.quick else 300)
    # Mixed durations: the optimum picks the longest orders; price-time priority
    # does not look at length, so this ratio prices fairness, not packing.
    mixed = market(200, 2_000, args.seed + 1, gangs=False)
    mixed_hours = gpu_hours(mixed, engine.match(mixed))
    mixed_optimum, _ = milp_optimum(mixed, time_limit=60 if args.quick else 300)

    print(
        f"throughput: {allocations} allocations of {orders} orders on {nodes} nodes in "
        f"{elapsed:.2f} s CPU = {per_s:,.0f}/s (first-fit baseline on {baseline_orders} "
        f"orders: {baseline_per_s:,.0f}/s)"
    )
    print(
        f"quality: engine {engine_hours:,.0f} GPU-hours, MILP optimum {optimum:,.0f} "
        f"({message}); ratio {engine_hours / optimum:.4f}; with mixed durations "
        f"{mixed_hours:,.0f} of {mixed_optimum:,.0f} ({mixed_hours / mixed_optimum:.4f})"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "allocations_per_s": round(per_s),
                "allocations": allocations,
                "orders": orders,
                "nodes": nodes,
                "engine_cpu_s": round(elapsed, 3),
                "first_fit_allocations_per_s": round(baseline_per_s),
                "throughput_ratio": round(per_s / baseline_per_s, 2),
                "engine_gpu_hours": round(engine_hours, 1),
                "milp_optimum_gpu_hours": round(optimum, 1),
                "ratio": round(engine_hours / optimum, 4),
                "mixed_duration_ratio": round(mixed_hours / mixed_optimum, 4),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
