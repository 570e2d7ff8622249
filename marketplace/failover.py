"""Failover: a node that went unhealthy, or an offer its provider force-withdrew, ends
its live leases; standing orders go back in the book."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from marketplace.lease_closing import lease_end
from marketplace.models import Lease
from providers.models import NodeLeaseOutcome


def node_failover(*, node_id: int, last_good: datetime | None, now: datetime | None = None) -> int:
    """A node went unhealthy: its live leases fail at its last good heartbeat (nothing
    is billed after it), standing orders go back in the book. Returns leases failed."""
    now = now or timezone.now()
    failed = 0
    live = Lease.objects.filter(node_id=node_id, state__in=Lease.LIVE_STATES).order_by("pk")
    for lease in live:
        until = min(last_good or lease.window_start or now, now)
        if lease.window_start is not None:
            until = max(until, lease.window_start)
        lease_end(
            lease=lease,
            state=Lease.State.FAILED,
            until=until,
            reason="node failed (heartbeats stopped)",
            outcome=NodeLeaseOutcome.Outcome.NODE_FAILED,
            requeue=True,
            now=now,
        )
        failed += 1
    return failed


def offer_forced_end(*, offer_id: int, at: datetime, now: datetime | None = None) -> int:
    """The provider force-withdrew an offer: its live leases end at ``at`` (billed to
    it); standing orders go back in the book."""
    now = now or timezone.now()
    ended = 0
    live = Lease.objects.filter(offer_id=offer_id, state__in=Lease.LIVE_STATES).order_by("pk")
    for lease in live:
        lease_end(
            lease=lease,
            state=Lease.State.FAILED,
            until=at,
            reason="the provider withdrew the offer",
            outcome=NodeLeaseOutcome.Outcome.PROVIDER_ENDED,
            requeue=True,
            now=now,
        )
        ended += 1
    return ended
