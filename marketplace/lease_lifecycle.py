"""Leases in time: activation, the hold of each billing window, and the tick that ends
leases whose time is up, preempts those whose notice ran out and renews open-ended
billing windows."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from core.db import retry_transaction
from core.errors import InsufficientFunds
from core.money import Money
from marketplace import events
from marketplace.common import HOLD_MARGIN, _iso, _lease_event, billing_window, credit
from marketplace.lease_closing import _settle_window, lease_end
from marketplace.models import Lease, Order
from marketplace.order_book import _order_locked
from providers.models import NodeLeaseOutcome


def _activate(lease: Lease, order: Order, now: datetime) -> None:
    lease.state = Lease.State.ACTIVE
    lease.started_at = now
    lease.window_start = now
    lease.save()
    uuids = list(lease.gpus.order_by("gpu_uuid").values_list("gpu_uuid", flat=True))
    _lease_event(
        lease,
        events.LeaseStarted(
            lease_id=lease.pk,
            order_id=order.pk,
            organization_id=lease.organization_id,
            provider_id=lease.provider_id,
            node_id=lease.node_id,
            gpu_uuids=uuids,
            workload_kind=order.workload_kind,
            workload_id=order.workload_id,
            usage_subject=lease.usage_subject,
            ends_at=_iso(lease.ends_at),
            at=now.isoformat(),
        ),
    )


@retry_transaction
def _lease_renew(lease_id: int, now: datetime) -> bool:
    _order_locked(Lease.objects.values_list("order_id", flat=True).get(pk=lease_id))
    lease = Lease.objects.select_for_update().get(pk=lease_id)
    if lease.state != Lease.State.ACTIVE or lease.window_end is None or lease.window_end > now:
        return False
    if lease.ends_at is not None and lease.ends_at <= lease.window_end:
        return False  # the end tick closes it
    settled_window = lease.window
    cost = _settle_window(lease, lease.window_end)
    window_start = lease.window_end
    window_end = window_start + billing_window()
    if lease.ends_at is not None:
        window_end = min(window_end, lease.ends_at)
    lease.window += 1
    lease.window_start, lease.window_end = window_start, window_end
    try:
        with transaction.atomic():
            lease.hold_micros = _hold_lease_window(lease)
    except InsufficientFunds:
        lease.window -= 1
        lease.save()
        lease_end(
            lease=lease,
            until=window_start,
            reason="credit ran out for the next billing window",
            outcome=NodeLeaseOutcome.Outcome.COMPLETED,
            now=now,
        )
        return True
    lease.save()
    _lease_event(
        lease,
        events.LeaseRenewed(
            lease_id=lease.pk,
            organization_id=lease.organization_id,
            settled_window=settled_window,
            window=lease.window,
            window_end=window_end.isoformat(),
            hold_id=lease.hold_id,
            hold_micros=lease.hold_micros,
            billed_micros=cost.buyer_micros,
            at=now.isoformat(),
        ),
    )
    return True


def leases_tick(*, now: datetime | None = None) -> dict[str, int]:
    """Move leases along in time: end those whose time is up, preempt those whose
    notice ran out, renew open-ended billing windows. Idempotent."""
    now = now or timezone.now()
    done = {"ended": 0, "preempted": 0, "renewed": 0}
    due_end = Lease.objects.filter(state=Lease.State.ACTIVE, ends_at__lte=now).order_by("pk")
    for lease in due_end:
        lease_end(lease=lease, until=lease.ends_at, reason="ran its duration", now=now)
        done["ended"] += 1
    due_preempt = Lease.objects.filter(state__in=Lease.LIVE_STATES, preempt_at__lte=now).order_by(
        "pk"
    )
    for lease in due_preempt:
        lease_end(
            lease=lease,
            state=Lease.State.PREEMPTED,
            until=lease.preempt_at,
            reason=f"preempted for order {lease.preempted_for_id}",
            outcome=NodeLeaseOutcome.Outcome.PREEMPTED,
            requeue=True,
            now=now,
        )
        done["preempted"] += 1
    due_window = Lease.objects.filter(state=Lease.State.ACTIVE, window_end__lte=now).order_by("pk")
    for lease in due_window:
        if _lease_renew(lease.pk, now):
            done["renewed"] += 1
    return done


def _hold_lease_window(lease: Lease) -> int:
    """Place the hold for the lease's current window; return its amount."""
    assert lease.window_start is not None and lease.window_end is not None
    seconds = int((lease.window_end - lease.window_start).total_seconds())
    cost = credit().gpu_time_cost(
        gpu_seconds=seconds * lease.gpu_count,
        price_micros_per_gpu_hour=lease.price_per_gpu_hour_micros,
        currency=lease.currency,
        managed=lease.managed,
    )
    amount = max(cost.buyer_micros, 1)  # a hold is positive; a sub-micro window costs 0
    credit().lease_hold_place(
        hold_id=lease.hold_id,
        buyer_organization_id=None if lease.managed else lease.organization_id,
        provider_organization_id=lease.provider_id,
        amount_micros=amount,
        currency=lease.currency,
        expires_at=lease.window_end + HOLD_MARGIN,
        description=f"lease {lease.pk} window {lease.window}: {lease.gpu_count}x "
        f"{lease.gpu_model} at {Money(lease.price_per_gpu_hour_micros, lease.currency)}/GPU-hour",
    )
    return amount
