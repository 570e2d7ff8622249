"""Two matchers at once against one PostgreSQL database, over 1,000 orders: no GPU is
ever in two live leases, no order is filled twice, and every hold is accounted for.
They run without the advisory lock that normally makes rounds take turns, so only the
database (row locks on orders, the unique index on live lease GPUs) keeps them apart."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection, connections

from ledger.models import Hold
from marketplace import services
from marketplace.models import Lease, LeaseGpu, Order
from marketplace.services import OrderSpec
from tests.marketplace.conftest import fund, healthy_node, offer

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_matchers_never_double_allocate(cast):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    for index in range(40):
        node = healthy_node(cast.provider_a, f"n{index}", count=8)
        offer(node, count=8, price=1_000_000 + (index % 5) * 100_000)
    fund(cast.buyer_a, 10**12)
    for index in range(1000):
        services.order_place(
            organization=cast.buyer_a,
            spec=OrderSpec(
                gpus_per_node=1 + index % 3,
                gpu_models=["h100-sxm-80gb"],
                limit_price_per_gpu_hour_micros=1_000_000 + (index % 7) * 100_000,
                duration_seconds=3600,
            ),
        )

    errors: list[BaseException] = []
    results: list[services.RoundResult] = []
    start = threading.Barrier(2)

    def matcher() -> None:
        try:
            start.wait()
            for _ in range(4):
                results.append(services.matching_round(lock=False))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=matcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    live = LeaseGpu.objects.filter(live=True)
    per_gpu = Counter(live.values_list("gpu_id", flat=True))
    assert per_gpu and max(per_gpu.values()) == 1
    assert live.count() == 320  # every GPU is leased: demand exceeds supply
    filled = Order.objects.filter(state=Order.State.FILLED)
    for order in filled:
        [lease] = Lease.objects.filter(order=order)
        assert lease.gpus.count() == order.gpus_per_node
        assert Hold.objects.get(hold_id=order.reservation_hold_id).state == "voided"
        assert Hold.objects.get(hold_id=lease.hold_id).state == "pending"
    assert Lease.objects.count() == filled.count()
    waiting = Order.objects.filter(state=Order.State.OPEN)
    assert filled.count() + waiting.count() == 1000
    assert all(Hold.objects.get(hold_id=o.reservation_hold_id).state == "pending" for o in waiting)
    assert sum(r.allocations for r in results) == filled.count()
