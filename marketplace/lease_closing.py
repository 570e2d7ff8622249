"""Leases: closing and settling. A lease's end settles its hold to what was
delivered, stops the work on its node, frees its GPUs and records the outcome; its
order goes back in the book (a standing order that lost its lease) or completes."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from core.db import retry_transaction
from core.errors import InsufficientFunds
from marketplace import events
from marketplace.assignments import services as assignments
from marketplace.common import _iso, _lease_event, _order_event, credit, matching_request
from marketplace.models import Lease, LeaseGpu, Order
from marketplace.order_book import _order_expire, _order_locked, _reserve
from pricing.services import GpuTimeCost
from providers import services as provider_services
from providers.models import Node, NodeLeaseOutcome


def _delivered_seconds(lease: Lease, until: datetime) -> int:
    """Whole seconds of the current billing window delivered up to ``until``."""
    if lease.window_start is None:
        return 0
    end = min(until, lease.window_end) if lease.window_end is not None else until
    return max(0, int((end - lease.window_start).total_seconds()))


def _settle_window(lease: Lease, until: datetime) -> GpuTimeCost:
    seconds = _delivered_seconds(lease, until)
    cost = credit().gpu_time_cost(
        gpu_seconds=seconds * lease.gpu_count,
        price_micros_per_gpu_hour=lease.price_per_gpu_hour_micros,
        currency=lease.currency,
        managed=lease.managed,
    )
    if cost.buyer_micros > lease.hold_micros:  # never more than was held (cannot happen:
        raise AssertionError(f"lease {lease.pk}: {cost} exceeds its hold")  # capped above)
    credit().lease_hold_settle(
        hold_id=lease.hold_id, provider_organization_id=lease.provider_id, cost=cost
    )
    lease.gpu_seconds_billed += cost.gpu_seconds
    lease.billed_micros += cost.buyer_micros
    if lease.window_start is not None:
        lease.billed_until = lease.window_start + timedelta(seconds=seconds)
    return cost


_CLOSED_EVENTS: dict[str, type[events._LeaseClosed]] = {
    Lease.State.ENDED: events.LeaseEnded,
    Lease.State.PREEMPTED: events.LeasePreempted,
    Lease.State.FAILED: events.LeaseFailed,
    Lease.State.CANCELLED: events.LeaseCancelled,
}


def _lease_close(
    lease: Lease, *, state: str, until: datetime, reason: str, outcome: str, now: datetime
) -> GpuTimeCost:
    """Settle a live lease's hold to ``until``, free its GPUs and record how it ended.
    The caller holds the order's and the lease's row locks."""
    # Work on the lease's node ends with it: its agent is told to stop at once. First,
    # before the settlement appends events: see assignments_stop_for_lease on lock order.
    assignments.assignments_stop_for_lease(lease_id=lease.pk, reason=f"lease {state}", now=now)
    if lease.state == Lease.State.ACTIVE:
        cost = _settle_window(lease, until)
    else:  # never started: nothing delivered
        credit().release(hold_id=lease.hold_id)
        cost = GpuTimeCost(gpu_seconds=0, provider_micros=0, fee_micros=0)
    lease.state = state
    lease.ended_at = now
    lease.end_reason = reason[:200]
    lease.save()
    LeaseGpu.objects.filter(lease=lease, live=True).update(live=False)
    node = Node.objects.get(pk=lease.node_id)
    provider_services.node_lease_outcome_record(
        node=node, lease_id=lease.usage_subject, outcome=outcome, ended_at=now
    )
    _lease_event(
        lease,
        _CLOSED_EVENTS[state](
            lease_id=lease.pk,
            order_id=lease.order_id,
            organization_id=lease.organization_id,
            provider_id=lease.provider_id,
            node_id=lease.node_id,
            billed_until=_iso(lease.billed_until),
            gpu_seconds=cost.gpu_seconds,
            provider_micros=cost.provider_micros,
            fee_micros=cost.fee_micros,
            reason=reason,
            at=now.isoformat(),
        ),
    )
    return cost


def _after_leases_closed(
    order: Order, *, requeue: bool, delivered_seconds: int, reason: str, now: datetime
) -> None:
    """The order of leases that just closed: back in the book (a standing order whose
    lease was preempted or failed, with what is left to run), or completed."""
    if (
        order.state != Order.State.FILLED
        or Lease.objects.filter(order=order, state__in=Lease.LIVE_STATES).exists()
    ):
        return
    left = None
    if order.duration_seconds is not None:
        left = (order.remaining_seconds or order.duration_seconds) - delivered_seconds
    wants_more = left is None or left >= 60
    if requeue and wants_more and order.time_in_force == Order.TimeInForce.STANDING:
        order.remaining_seconds = left
        order.state = Order.State.OPEN
        order.requeues += 1
        try:
            with transaction.atomic():
                _reserve(order)
        except InsufficientFunds:
            order.reservations -= 1
            _order_expire(order, reason="not enough credit to go back in the book", now=now)
            return
        order.save()
        _order_event(
            order,
            events.OrderRequeued(
                order_id=order.pk,
                organization_id=order.organization_id,
                reason=reason,
                remaining_seconds=left,
                reserved_micros=order.reserved_micros,
                at=now.isoformat(),
            ),
        )
        matching_request()
        return
    order.state = Order.State.COMPLETED
    order.closed_at = now
    order.close_reason = reason[:200]
    order.save()
    _order_event(
        order,
        events.OrderCompleted(
            order_id=order.pk, organization_id=order.organization_id, at=now.isoformat()
        ),
    )


@retry_transaction
def lease_end(
    *,
    lease: Lease,
    state: str = Lease.State.ENDED,
    until: datetime | None = None,
    reason: str = "ended",
    outcome: str = NodeLeaseOutcome.Outcome.COMPLETED,
    requeue: bool = False,
    now: datetime | None = None,
) -> Lease:
    """End a live lease (and the rest of its gang) billed to ``until`` (default now).
    A lease already closed is returned as it is: each hold settles exactly once."""
    now = now or timezone.now()
    until = min(until or now, now)
    order = _order_locked(lease.order_id)
    gang = list(
        Lease.objects.select_for_update()
        .filter(order=order, allocation=lease.allocation, state__in=Lease.LIVE_STATES)
        .order_by("pk")
    )
    target = next((g for g in gang if g.pk == lease.pk), None)
    if target is None:
        return Lease.objects.get(pk=lease.pk)
    delivered = 0
    if target.started_at is not None:
        delivered = max(0, int((until - target.started_at).total_seconds()))
    for member in gang:
        if member.pk == target.pk:
            _lease_close(member, state=state, until=until, reason=reason, outcome=outcome, now=now)
        else:  # a gang runs together: the others end with it, billed to the same moment
            # A gang that failed or was preempted failed for every member (what the
            # workload on any member's lease follows: it resumes on the next gang);
            # their nodes' records say completed: the fault was not theirs.
            member_state: str
            if member.state != Lease.State.ACTIVE:
                member_state = Lease.State.CANCELLED
            elif state in (Lease.State.FAILED, Lease.State.PREEMPTED):
                member_state = state
            else:
                member_state = Lease.State.ENDED
            _lease_close(
                member,
                state=member_state,
                until=until,
                reason=f"gang member lease {target.pk}: {reason}",
                outcome=NodeLeaseOutcome.Outcome.COMPLETED,
                now=now,
            )
    _after_leases_closed(
        order, requeue=requeue, delivered_seconds=delivered, reason=reason, now=now
    )
    target.refresh_from_db()
    return target
