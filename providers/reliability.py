"""Reliability: a node's score (uptime in its window times the share of its leases
that ended normally), the provider's over all its nodes, the lease outcomes it
counts, and the score stored on the node for the matcher and buyer filters. Reads
and the writes that keep them are one role, so they stay together; selectors
re-exports the reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.models import Organization
from core.validation import field_error
from providers.models import Node, NodeHeartbeatMinute, NodeLeaseOutcome

RELIABILITY_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Reliability:
    """score = uptime_share x lease_share (lease_share counts as 1 with no leases).

    uptime_share: minutes with at least one heartbeat / minutes in the window. The
    window is the last 30 days, or since the node registered when that is later,
    ending at the start of the current minute. lease_share: leases that ended
    normally (completed, cancelled by the buyer, preempted as the offer allows) /
    leases that ended, over the same window.
    """

    window_start: datetime
    window_end: datetime
    minutes_expected: int
    minutes_up: int
    uptime_share: float | None
    leases_ended: int
    leases_ended_normally: int
    lease_share: float | None
    score: float | None
    formula: str = "uptime_share * (lease_share if leases_ended else 1)"


def _reliability(
    *,
    minutes_expected: int,
    minutes_up: int,
    leases_ended: int,
    leases_normal: int,
    window_start: datetime,
    window_end: datetime,
) -> Reliability:
    uptime = minutes_up / minutes_expected if minutes_expected else None
    lease_share = leases_normal / leases_ended if leases_ended else None
    score = None if uptime is None else uptime * (lease_share if lease_share is not None else 1)
    return Reliability(
        window_start=window_start,
        window_end=window_end,
        minutes_expected=minutes_expected,
        minutes_up=minutes_up,
        uptime_share=None if uptime is None else round(uptime, 6),
        leases_ended=leases_ended,
        leases_ended_normally=leases_normal,
        lease_share=None if lease_share is None else round(lease_share, 6),
        score=None if score is None else round(score, 6),
    )


def _window(*, registered_at: datetime, now: datetime | None) -> tuple[datetime, datetime]:
    end = (now or timezone.now()).replace(second=0, microsecond=0)
    start = max(end - RELIABILITY_WINDOW, registered_at.replace(second=0, microsecond=0))
    return start, max(start, end)


def _lease_counts(
    nodes: QuerySet[Node] | list[Node], start: datetime, end: datetime
) -> tuple[int, int]:
    outcomes = NodeLeaseOutcome.objects.filter(
        node__in=nodes, ended_at__gte=start, ended_at__lt=end
    )
    return outcomes.count(), outcomes.filter(outcome__in=NodeLeaseOutcome.NORMAL).count()


def node_reliability(*, node: Node, now: datetime | None = None) -> Reliability:
    start, end = _window(registered_at=node.registered_at, now=now)
    minutes_up = NodeHeartbeatMinute.objects.filter(
        node=node, minute__gte=start, minute__lt=end
    ).count()
    ended, normal = _lease_counts([node], start, end)
    return _reliability(
        minutes_expected=int((end - start).total_seconds() // 60),
        minutes_up=minutes_up,
        leases_ended=ended,
        leases_normal=normal,
        window_start=start,
        window_end=end,
    )


def provider_reliability(*, organization: Organization, now: datetime | None = None) -> Reliability:
    """Over all the provider's nodes: minutes and leases summed, then divided."""
    end = (now or timezone.now()).replace(second=0, microsecond=0)
    expected = up = ended = normal = 0
    earliest = end
    for node in Node.objects.filter(organization=organization):
        part = node_reliability(node=node, now=now)
        expected += part.minutes_expected
        up += part.minutes_up
        ended += part.leases_ended
        normal += part.leases_ended_normally
        earliest = min(earliest, part.window_start)
    return _reliability(
        minutes_expected=expected,
        minutes_up=up,
        leases_ended=ended,
        leases_normal=normal,
        window_start=earliest,
        window_end=end,
    )


@transaction.atomic
def node_lease_outcome_record(
    *, node: Node, lease_id: str, outcome: str, ended_at: datetime
) -> NodeLeaseOutcome:
    """How a lease on ``node`` ended; for the marketplace to call as leases end.
    Idempotent on ``lease_id``: the first outcome recorded stands."""
    if outcome not in NodeLeaseOutcome.Outcome.values:
        raise field_error("outcome", f"must be one of {', '.join(NodeLeaseOutcome.Outcome)}")
    if timezone.is_naive(ended_at):
        raise field_error("ended_at", "must be timezone-aware")
    found, _ = NodeLeaseOutcome.objects.get_or_create(
        lease_id=lease_id, defaults={"node": node, "outcome": outcome, "ended_at": ended_at}
    )
    return found


def node_reliability_refresh(*, node: Node, now: datetime | None = None) -> float | None:
    """Store the node's current score on it, for the matcher and buyer filters."""
    score = node_reliability(node=node, now=now).score
    Node.objects.filter(pk=node.pk).update(reliability_score=score)
    return score
