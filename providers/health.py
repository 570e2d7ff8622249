"""A node's health: what its telemetry says (ECC errors, XID faults), how often it
must be heard from, and what its silence means (``node_health_sweep``,
``node_health_lost``). Each change of health is one ``NodeHealthChanged`` event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from providers import events
from providers.models import Node
from providers.nvml import APPLICATION_XIDS
from providers.streams import iso, stream_append

# How long an XID fault keeps a node degraded after it was reported: XIDs are
# one-off events, and a node must not flap back to healthy on the next heartbeat.
XID_DEGRADED_HOLD = timedelta(minutes=10)


def heartbeat_timeout() -> timedelta:
    return timedelta(seconds=settings.NODE_HEARTBEAT_TIMEOUT_SECONDS)


def heartbeat_interval_seconds() -> int:
    """What the server tells agents: a quarter of the timeout (at least 1 s, at most
    15 s), so three heartbeats in a row can be lost before a node turns unhealthy and
    every minute of uptime holds at least one heartbeat."""
    return max(1, min(15, int(heartbeat_timeout().total_seconds()) // 4))


def health_from_telemetry(
    *, last_xid_at: datetime | None, samples: Sequence[dict[str, Any]], now: datetime
) -> tuple[str, str]:
    faults = []
    for sample in samples:
        if (sample.get("ecc_uncorrected") or 0) > 0:
            faults.append(
                f"GPU {sample['uuid']}: {sample['ecc_uncorrected']} uncorrectable "
                "(double-bit) ECC errors"
            )
        hardware = [x for x in sample.get("xid_events") or [] if x not in APPLICATION_XIDS]
        if hardware:
            faults.append(f"GPU {sample['uuid']}: XID {', '.join(map(str, hardware))}")
    if faults:
        return Node.Health.DEGRADED, "; ".join(faults)[:500]
    if last_xid_at is not None and now - last_xid_at < XID_DEGRADED_HOLD:
        return Node.Health.DEGRADED, (
            f"XID fault at {last_xid_at.isoformat()} "
            f"(degraded for {int(XID_DEGRADED_HOLD.total_seconds() // 60)} minutes after one)"
        )
    return Node.Health.HEALTHY, ""


def health_change(*, node: Node, previous: str, health: str, reason: str, at: datetime) -> None:
    stream_append(
        stream_type="node",
        stream_id=f"node-{node.pk}",
        tenant_id=node.organization_id,
        event=events.NodeHealthChanged(
            node_id=node.pk,
            organization_id=node.organization_id,
            previous=previous,
            health=health,
            reason=reason,
            last_heartbeat_at=iso(node.last_heartbeat_at),
            at=at.isoformat(),
        ),
    )


def node_health_sweep(*, now: datetime | None = None) -> list[int]:
    """Mark nodes whose heartbeats stopped for longer than the timeout unhealthy, one
    event per node that changes. Returns their ids. Safe to run from many processes:
    each change is claimed with a conditional update."""
    now = now or timezone.now()
    cutoff = now - heartbeat_timeout()
    live = [Node.Health.HEALTHY, Node.Health.DEGRADED, Node.Health.UNKNOWN]
    stale = Node.objects.filter(health__in=live).filter(
        Q(last_heartbeat_at__lt=cutoff)
        | Q(last_heartbeat_at__isnull=True, registered_at__lt=cutoff)
    )
    changed = []
    for node in stale.order_by("pk"):
        with transaction.atomic():
            claimed = Node.objects.filter(
                pk=node.pk, health=node.health, last_heartbeat_at=node.last_heartbeat_at
            ).update(
                health=Node.Health.UNHEALTHY,
                health_changed_at=now,
                health_reason=(reason := _silence_reason(node=node, now=now)),
            )
            if not claimed:
                continue  # a heartbeat or another sweeper got there first
            health_change(
                node=node,
                previous=node.health,
                health=Node.Health.UNHEALTHY,
                reason=reason,
                at=now,
            )
        changed.append(node.pk)
    return changed


def node_health_lost(*, node_id: int, reason: str, now: datetime | None = None) -> bool:
    """The node stopped renewing a claim on leased work (its agent died, or lost the
    network): unhealthy now, so no new lease lands on it, without waiting for the
    heartbeat timeout. Its next heartbeat makes it healthy again. False when it was
    unhealthy already."""
    now = now or timezone.now()
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(pk=node_id).first()
        if node is None or node.health == Node.Health.UNHEALTHY:
            return False
        previous = node.health
        Node.objects.filter(pk=node_id).update(
            health=Node.Health.UNHEALTHY, health_changed_at=now, health_reason=reason[:500]
        )
        health_change(
            node=node, previous=previous, health=Node.Health.UNHEALTHY, reason=reason, at=now
        )
    return True


def _silence_reason(*, node: Node, now: datetime) -> str:
    timeout = int(heartbeat_timeout().total_seconds())
    if node.last_heartbeat_at is None:
        return f"no heartbeat since registration, more than {timeout} s ago"
    silent = int((now - node.last_heartbeat_at).total_seconds())
    return f"no heartbeat for {silent} s (timeout {timeout} s)"
