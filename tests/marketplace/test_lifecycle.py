"""Orders, matching rounds and leases against the real database and ledger."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import InsufficientFunds, InvalidInput
from core.eventstore import stream_read
from ledger.models import Account, Hold
from marketplace import services
from marketplace.models import Lease, LeaseGpu, Order
from marketplace.services import OrderSpec
from tests.marketplace.conftest import available, balance, fund, healthy_node, hold, offer

pytestmark = pytest.mark.django_db(transaction=True)


def spec(**extra) -> OrderSpec:
    values = {
        "gpus_per_node": 2,
        "gpu_models": ["h100-sxm-80gb"],
        "limit_price_per_gpu_hour_micros": 3_000_000,
        "duration_seconds": 3600,
    }
    values.update(extra)
    return OrderSpec(**values)


def test_order_reserves_its_maximum_cost_and_a_lease_converts_it(cast, buyer):
    node = healthy_node(cast.provider_a, "n1")
    listed = offer(node, price=2_000_000)
    before = available(buyer)

    order = services.order_place(organization=buyer, spec=spec())

    # 2 GPUs x 1 h x $3.00 limit = $6.00, + 10% fee
    assert order.reserved_micros == 6_600_000
    assert available(buyer) == before - 6_600_000
    result = services.matching_round()
    assert result.allocations == 1
    order.refresh_from_db()
    lease = Lease.objects.get(order=order)
    assert order.state == Order.State.FILLED
    assert lease.state == Lease.State.ACTIVE
    assert lease.offer_id == listed.pk
    assert lease.price_per_gpu_hour_micros == 2_000_000  # pay-as-ask
    assert lease.gpus.filter(live=True).count() == 2
    assert hold(order.reservation_hold_id).state == Hold.State.VOIDED
    # the lease hold: 2 GPUs x 1 h x $2.00 + 10%
    assert hold(lease.hold_id).amount_micros == 4_400_000
    assert available(buyer) == before - 4_400_000
    types = [e.type for e in stream_read(lease.stream_id)]
    assert types == ["LeaseAllocated", "LeaseStarted"]


def test_ending_a_lease_posts_delivered_gpu_seconds_with_fee_in_one_entry(cast, buyer):
    node = healthy_node(cast.provider_a, "n1")
    offer(node, price=2_000_000)
    order = services.order_place(organization=buyer, spec=spec())
    services.matching_round()
    lease = Lease.objects.get(order=order)
    before = available(buyer)

    # 1,801 s later the buyer cancels: 2 GPUs x 1,801 s at $2.00/h
    services.order_cancel(order=order, now=lease.started_at + timedelta(seconds=1801))

    lease.refresh_from_db()
    assert lease.state == Lease.State.ENDED
    assert lease.gpu_seconds_billed == 3602
    provider = 3602 * 2_000_000 // 3600  # 2,001,111.1 -> half-even
    assert lease.billed_micros == 2_001_111 + 200_111
    held = hold(lease.hold_id)
    assert (held.state, held.posted_micros) == (Hold.State.POSTED, 2_201_222)
    assert balance(cast.provider_a, Account.Kind.PAYABLE).credits_posted == 2_001_111
    assert balance(None, Account.Kind.FEES).credits_posted == 200_111
    assert available(buyer) == before + 4_400_000 - 2_201_222
    assert provider == 2_001_111
    assert not LeaseGpu.objects.filter(lease=lease, live=True).exists()
    order.refresh_from_db()
    assert order.state == Order.State.CANCELLED


def test_insufficient_credit_is_refused_with_the_amount_missing(cast):
    fund(cast.buyer_b, 1_000_000)
    with pytest.raises(InsufficientFunds) as caught:
        services.order_place(organization=cast.buyer_b, spec=spec())
    assert caught.value.details["missing_micros"] == 6_600_000 - 1_000_000
    assert not Order.objects.filter(organization=cast.buyer_b).exists()


def test_a_lease_runs_its_duration_and_the_order_completes(cast, buyer):
    node = healthy_node(cast.provider_a, "n1")
    offer(node, price=1_800_000)
    order = services.order_place(organization=buyer, spec=spec(gpus_per_node=1))
    services.matching_round()
    lease = Lease.objects.get(order=order)

    services.leases_tick(now=lease.started_at + timedelta(hours=2))

    lease.refresh_from_db()
    order.refresh_from_db()
    assert lease.state == Lease.State.ENDED
    assert lease.gpu_seconds_billed == 3600
    assert hold(lease.hold_id).posted_micros == 1_800_000 + 180_000
    assert order.state == Order.State.COMPLETED


def test_malformed_orders_name_the_field(cast, buyer):
    for bad, name in [
        (spec(gpus_per_node=0), "gpus_per_node"),
        (spec(gpu_models=["h900"]), "gpu_models[0]"),
        (spec(interconnect="token-ring"), "interconnect"),
        (spec(duration_seconds=5), "duration_seconds"),
        (spec(deadline=timezone.now() - timedelta(hours=1)), "deadline"),
    ]:
        with pytest.raises(InvalidInput) as caught:
            services.order_place(organization=buyer, spec=bad)
        assert name in caught.value.details["fields"]
