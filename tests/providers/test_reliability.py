from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from providers import selectors, services
from providers.models import Node, NodeHeartbeatMinute

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 31, 12, 0, 30, tzinfo=UTC)


def _beat_minutes(node: Node, minutes: list[datetime]) -> None:
    NodeHeartbeatMinute.objects.bulk_create(
        [NodeHeartbeatMinute(node=node, minute=m, heartbeats=4) for m in minutes]
    )


def test_uptime_is_minutes_with_a_heartbeat_over_minutes_since_registration(cast, make_node):
    # given: a node registered 10 days ago, up for all of it except two outages:
    # 3 hours on day 2 and 90 minutes on day 7
    node = make_node(cast.provider_a)
    registered = NOW.replace(second=0) - timedelta(days=10)
    Node.objects.filter(pk=node.pk).update(registered_at=registered)
    node.refresh_from_db()
    outage = {registered + timedelta(days=2, minutes=m) for m in range(180)}
    outage |= {registered + timedelta(days=7, hours=5, minutes=m) for m in range(90)}
    every = [registered + timedelta(minutes=m) for m in range(10 * 24 * 60)]
    _beat_minutes(node, [m for m in every if m not in outage])

    reliability = selectors.node_reliability(node=node, now=NOW)

    # by hand: 14,400 minutes in the window, 270 of them silent
    assert reliability.minutes_expected == 14_400
    assert reliability.minutes_up == 14_130
    assert reliability.uptime_share == round(14_130 / 14_400, 6)  # 0.98125
    assert reliability.lease_share is None
    assert reliability.score == 0.98125


def test_the_window_is_the_last_30_days(cast, make_node):
    node = make_node(cast.provider_a)
    end = NOW.replace(second=0)
    Node.objects.filter(pk=node.pk).update(registered_at=end - timedelta(days=60))
    node.refresh_from_db()
    # heartbeats only in the first 30 days: outside the window
    _beat_minutes(node, [end - timedelta(days=60) + timedelta(minutes=m) for m in range(1000)])
    # and 4,320 minutes (3 days) inside it
    _beat_minutes(node, [end - timedelta(days=3) + timedelta(minutes=m) for m in range(4320)])

    reliability = selectors.node_reliability(node=node, now=NOW)

    assert reliability.minutes_expected == 30 * 24 * 60
    assert reliability.minutes_up == 4320
    assert reliability.score == 0.1


def test_lease_outcomes_multiply_in(cast, make_node):
    node = make_node(cast.provider_a)
    registered = NOW.replace(second=0) - timedelta(days=1)
    Node.objects.filter(pk=node.pk).update(registered_at=registered)
    node.refresh_from_db()
    _beat_minutes(node, [registered + timedelta(minutes=m) for m in range(1440)])
    for index, outcome in enumerate(
        ["completed", "completed", "preempted", "cancelled_by_buyer", "node_failed"]
    ):
        services.node_lease_outcome_record(
            node=node,
            lease_id=f"lease-{index}",
            outcome=outcome,
            ended_at=registered + timedelta(hours=index + 1),
        )
    # recorded twice by an at-least-once follower: counted once
    services.node_lease_outcome_record(
        node=node,
        lease_id="lease-0",
        outcome="node_failed",
        ended_at=registered + timedelta(hours=1),
    )

    reliability = selectors.node_reliability(node=node, now=NOW)

    assert (reliability.leases_ended, reliability.leases_ended_normally) == (5, 4)
    assert reliability.uptime_share == 1.0
    assert reliability.lease_share == 0.8
    assert reliability.score == 0.8
    assert services.node_reliability_refresh(node=node, now=NOW) == 0.8
    node.refresh_from_db()
    assert node.reliability_score == 0.8


def test_provider_reliability_sums_minutes_over_nodes(cast, make_node):
    end = NOW.replace(second=0)
    a = make_node(cast.provider_a, "a")
    b = make_node(cast.provider_a, "b")
    Node.objects.filter(pk__in=[a.pk, b.pk]).update(registered_at=end - timedelta(minutes=100))
    _beat_minutes(a, [end - timedelta(minutes=m) for m in range(1, 101)])  # 100 of 100
    _beat_minutes(b, [end - timedelta(minutes=m) for m in range(1, 51)])  # 50 of 100

    reliability = selectors.provider_reliability(organization=cast.provider_a, now=NOW)

    assert (reliability.minutes_up, reliability.minutes_expected) == (150, 200)
    assert reliability.score == 0.75


def test_the_portal_shows_the_score_with_its_inputs(cast, make_node):
    node = make_node(cast.provider_a)

    body = cast.client(cast.provider_a).get(f"/api/v1/provider/nodes/{node.pk}").json()

    assert set(body["reliability"]) >= {
        "score",
        "formula",
        "window_start",
        "window_end",
        "minutes_expected",
        "minutes_up",
        "uptime_share",
        "leases_ended",
        "leases_ended_normally",
        "lease_share",
    }
