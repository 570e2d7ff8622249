"""Preemption and failover end with the right lease states, the right amounts on the
ledger (each hold posted or voided exactly once) and the order back in the book."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.eventstore import stream_read
from core.followers import followers_run_until_idle
from ledger.models import Account, Hold, Posting
from marketplace import services
from marketplace.followers import supply_follower
from marketplace.models import Lease, Order
from marketplace.services import OrderSpec
from providers import services as supply
from providers.models import Node, Offer
from tests.marketplace.conftest import available, balance, healthy_node, hold, offer

pytestmark = pytest.mark.django_db(transaction=True)


def _posted_once(hold_id: str) -> None:
    resolutions = [e.type for e in stream_read(f"hold:{hold_id}")]
    assert resolutions[0] == "HoldCreated"
    assert len(resolutions) == 2 and resolutions[1] in ("HoldPosted", "HoldVoided")


def test_on_demand_order_preempts_an_interruptible_lease_after_its_grace(cast, buyer):
    # given an interruptible offer of 4 GPUs, fully leased by a standing interruptible order
    node = healthy_node(cast.provider_a, "n1", count=4)
    spot = offer(node, count=4, price=1_000_000, kind=Offer.Kind.INTERRUPTIBLE)
    victim_order = services.order_place(
        organization=buyer,
        spec=OrderSpec(
            gpus_per_node=4,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=1_200_000,
            kind=Order.Kind.INTERRUPTIBLE,
            duration_seconds=7200,
        ),
    )
    services.matching_round()
    victim = Lease.objects.get(order=victim_order)
    t0 = victim.started_at

    # when an on-demand order at the offer's price arrives
    from tests.marketplace.conftest import fund

    fund(cast.buyer_b, 100_000_000)
    urgent = services.order_place(
        organization=cast.buyer_b,
        spec=OrderSpec(
            gpus_per_node=2,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=1_000_000,
            duration_seconds=3600,
        ),
    )
    result = services.matching_round(now=t0 + timedelta(seconds=600))

    # then the victim gets notice with the offer's grace period, and still runs
    assert result.preemptions == 1
    victim.refresh_from_db()
    assert victim.state == Lease.State.ACTIVE
    assert victim.preempt_at == t0 + timedelta(seconds=600 + 120)
    noticed = [e for e in stream_read(victim.stream_id) if e.type == "LeasePreemptionNoticed"]
    assert noticed[0].payload["for_order_id"] == urgent.pk

    # when the grace period runs out
    services.matching_round(now=t0 + timedelta(seconds=721))

    # then the victim is preempted, billed to the deadline (4 GPUs x 720 s at $1.00/h)
    victim.refresh_from_db()
    assert victim.state == Lease.State.PREEMPTED
    assert victim.gpu_seconds_billed == 4 * 720
    assert hold(victim.hold_id).posted_micros == 800_000 + 80_000
    _posted_once(victim.hold_id)
    # its standing order is back in the book with what is left to run
    victim_order.refresh_from_db()
    assert victim_order.state == Order.State.OPEN
    assert victim_order.remaining_seconds == 7200 - 720
    assert hold(victim_order.reservation_hold_id).state == Hold.State.PENDING
    # and the on-demand order got the GPUs on the same offer
    urgent.refresh_from_db()
    assert urgent.state == Order.State.FILLED
    won = Lease.objects.get(order=urgent)
    assert won.offer_id == spot.pk and won.kind == Order.Kind.ON_DEMAND


def test_a_failed_node_fails_its_leases_at_the_last_good_heartbeat(cast, buyer):
    # given a lease on a node, and a second healthy node for the retry
    node = healthy_node(cast.provider_a, "n1", count=8)
    offer(node, count=8, price=2_000_000)
    order = services.order_place(
        organization=buyer,
        spec=OrderSpec(
            gpus_per_node=8,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=2_500_000,
            duration_seconds=3600,
        ),
    )
    services.matching_round()
    lease = Lease.objects.get(order=order)
    last_good = lease.started_at + timedelta(seconds=300)
    Node.objects.filter(pk=node.pk).update(last_heartbeat_at=last_good)
    payable_before = balance(cast.provider_a, Account.Kind.PAYABLE).credits_posted

    # when the node monitor marks it unhealthy and the marketplace follows
    supply.node_health_sweep(now=last_good + timedelta(minutes=5))
    followers_run_until_idle([supply_follower])

    # then the lease failed, billed only to the last good heartbeat: 8 x 300 s at $2.00/h
    lease.refresh_from_db()
    assert lease.state == Lease.State.FAILED
    assert lease.billed_until == last_good
    assert lease.gpu_seconds_billed == 2400
    assert hold(lease.hold_id).posted_micros == 1_333_333 + 133_333
    _posted_once(lease.hold_id)
    payable = balance(cast.provider_a, Account.Kind.PAYABLE).credits_posted
    assert payable - payable_before == 1_333_333
    # the order is back in the book, with its reservation again
    order.refresh_from_db()
    assert order.state == Order.State.OPEN and order.requeues == 1
    assert order.remaining_seconds == 3600 - 300
    # and a following round puts it on a healthy node
    spare = healthy_node(cast.provider_b, "spare", count=8)
    offer(spare, count=8, price=2_200_000)
    services.matching_round()
    order.refresh_from_db()
    retry = Lease.objects.filter(order=order, state=Lease.State.ACTIVE).get()
    assert retry.node_id == spare.pk
    assert retry.ends_at == retry.started_at + timedelta(seconds=3300)
    # following the same events again changes nothing (exactly once)
    followers_run_until_idle([supply_follower])
    assert Posting.objects.filter(entry__stream_id=f"hold:{lease.hold_id}").count() == 3


def test_a_forced_withdrawal_ends_leases_at_its_moment(cast, buyer):
    node = healthy_node(cast.provider_a, "n1", count=2)
    listed = offer(node, count=2, price=3_600_000)
    order = services.order_place(
        organization=buyer,
        spec=OrderSpec(
            gpus_per_node=1,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=3_600_000,
            duration_seconds=3600,
            time_in_force=Order.TimeInForce.IOC,
        ),
    )
    services.matching_round()
    lease = Lease.objects.get(order=order)
    before = available(buyer)

    supply.offer_withdraw(offer=listed, force=True)
    followers_run_until_idle([supply_follower])

    lease.refresh_from_db()
    listed.refresh_from_db()
    assert lease.state == Lease.State.FAILED
    assert lease.billed_until <= listed.forced_end_at
    # an ioc order does not go back in the book
    order.refresh_from_db()
    assert order.state == Order.State.COMPLETED
    assert available(buyer) > before
    assert timezone.now() >= lease.ended_at
