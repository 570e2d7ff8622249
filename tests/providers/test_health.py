from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import Event
from providers import services
from providers.models import Node
from tests.providers.conftest import beat, samples

pytestmark = pytest.mark.django_db


def _health_events(node: Node) -> list[dict]:
    return [
        e.payload
        for e in Event.objects.filter(
            stream_id=f"node-{node.pk}", type="NodeHealthChanged"
        ).order_by("version")
    ]


def test_silence_past_the_timeout_flips_health_once_and_a_heartbeat_flips_it_back(
    cast, make_node, settings
):
    settings.NODE_HEARTBEAT_TIMEOUT_SECONDS = 60
    node = make_node(cast.provider_a)
    start = timezone.now()
    beat(node, samples=samples(node), now=start)

    # within the timeout: nothing changes
    assert services.node_health_sweep(now=start + timedelta(seconds=59)) == []
    # past it: unhealthy, and checking again and again adds no event
    assert services.node_health_sweep(now=start + timedelta(seconds=61)) == [node.pk]
    for seconds in (62, 90, 300, 3600):
        assert services.node_health_sweep(now=start + timedelta(seconds=seconds)) == []
    node.refresh_from_db()
    assert node.health == Node.Health.UNHEALTHY
    assert node.health_reason == "no heartbeat for 61 s (timeout 60 s)"

    # recovery: one heartbeat, one event back to healthy
    beat(node, samples=samples(node), now=start + timedelta(seconds=3601))
    beat(node, samples=samples(node), now=start + timedelta(seconds=3602))
    node.refresh_from_db()
    assert node.health == Node.Health.HEALTHY
    assert [(e["previous"], e["health"]) for e in _health_events(node)] == [
        ("unknown", "healthy"),
        ("healthy", "unhealthy"),
        ("unhealthy", "healthy"),
    ]


def test_the_timeout_comes_from_settings(cast, make_node, settings):
    settings.NODE_HEARTBEAT_TIMEOUT_SECONDS = 5
    node = make_node(cast.provider_a)
    start = timezone.now()
    beat(node, samples=samples(node), now=start)

    assert services.node_health_sweep(now=start + timedelta(seconds=6)) == [node.pk]


def test_a_node_that_never_sent_a_heartbeat_turns_unhealthy(cast, make_node):
    node = make_node(cast.provider_a)

    changed = services.node_health_sweep(now=node.registered_at + timedelta(seconds=61))

    assert changed == [node.pk]
    assert _health_events(node)[0]["reason"].startswith("no heartbeat since registration")


def test_double_bit_ecc_errors_degrade_a_node(cast, make_node):
    node = make_node(cast.provider_a)
    now = timezone.now()
    beat(node, samples=samples(node, ecc_uncorrected=0), now=now)

    reported = samples(node, ecc_uncorrected=0)
    reported[3]["ecc_uncorrected"] = 2
    beat(node, samples=reported, now=now + timedelta(seconds=1))
    beat(node, samples=reported, now=now + timedelta(seconds=2))

    node.refresh_from_db()
    assert node.health == Node.Health.DEGRADED
    assert "2 uncorrectable (double-bit) ECC errors" in node.health_reason
    assert [e["health"] for e in _health_events(node)] == ["healthy", "degraded"]


def test_an_xid_fault_degrades_a_node_for_a_while_and_application_xids_do_not(cast, make_node):
    node = make_node(cast.provider_a)
    now = timezone.now()
    beat(node, samples=samples(node), now=now)

    # XID 13 (a graphics engine exception from user code) is the application's doing
    app = samples(node)
    app[0]["xid_events"] = [13]
    beat(node, samples=app, now=now + timedelta(seconds=1))
    node.refresh_from_db()
    assert node.health == Node.Health.HEALTHY

    # XID 79 (GPU fallen off the bus) is the hardware's
    fault = samples(node)
    fault[0]["xid_events"] = [79]
    beat(node, samples=fault, now=now + timedelta(seconds=2))
    # it stays degraded on the clean heartbeats that follow, then recovers
    beat(node, samples=samples(node), now=now + timedelta(minutes=5))
    node.refresh_from_db()
    assert node.health == Node.Health.DEGRADED
    beat(node, samples=samples(node), now=now + timedelta(minutes=11))
    node.refresh_from_db()
    assert node.health == Node.Health.HEALTHY
    assert [e["health"] for e in _health_events(node)] == ["healthy", "degraded", "healthy"]


def test_a_heartbeat_keeps_one_sample_per_gpu_and_folds_minutes(cast, make_node):
    from providers.models import GpuMinuteRollup, GpuSample

    node = make_node(cast.provider_a, count=2)
    minute = timezone.now().replace(second=0, microsecond=0)
    for second, utilization in ((1, 10), (20, 30), (40, 80)):
        beat(
            node,
            samples=samples(node, utilization_pct=utilization, power_mw=100_000),
            now=minute + timedelta(seconds=second),
        )
    beat(node, samples=samples(node, utilization_pct=50), now=minute + timedelta(seconds=61))

    assert GpuSample.objects.filter(gpu__node=node).count() == 2
    assert set(GpuSample.objects.values_list("utilization_pct", flat=True)) == {50}
    first = GpuMinuteRollup.objects.filter(gpu__node=node, minute=minute)
    assert first.count() == 2
    row = first.first()
    assert (row.samples, row.utilization_sum, row.utilization_max) == (3, 120, 80)
    assert (row.power_samples, row.power_sum_mw) == (3, 300_000)
    assert GpuMinuteRollup.objects.filter(gpu__node=node).count() == 4


def test_unknown_gpus_in_a_heartbeat_ask_for_registration(cast, make_node):
    node = make_node(cast.provider_a, count=1)

    result = beat(node, samples=[*samples(node), {"uuid": "GPU-new"}])

    assert result.unknown_gpu_uuids == ["GPU-new"]


def test_old_telemetry_is_pruned_and_recent_telemetry_kept(cast, make_node):
    from providers.models import GpuMinuteRollup, NodeHeartbeatMinute

    node = make_node(cast.provider_a, count=1)
    now = timezone.now()
    for days in (40, 10, 1):
        beat(node, samples(node, utilization_pct=1), now=now - timedelta(days=days))

    services.telemetry_prune(now=now)

    # rollups: a week; heartbeat minutes (uptime): 35 days
    assert GpuMinuteRollup.objects.filter(gpu__node=node).count() == 1
    assert NodeHeartbeatMinute.objects.filter(node=node).count() == 2


@pytest.mark.django_db(transaction=True)
def test_racing_heartbeats_change_health_once_and_all_count(cast, make_node):
    # given: a node that has never sent a heartbeat, and one with an XID fault
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    from providers.models import NodeHeartbeatMinute

    fresh = make_node(cast.provider_a, hostname="fresh", count=2)
    faulty = make_node(cast.provider_a, hostname="faulty", count=2)
    clean = {fresh.pk: samples(fresh), faulty.pk: samples(faulty)}
    fault = samples(faulty, xid_events=[79])

    def send(node: Node, reported: list[dict]) -> None:
        try:
            for _ in range(5):
                beat(node, reported)
        finally:
            connections.close_all()

    # when: eight agents' worth of heartbeats race on each node, one reporting a fault
    with ThreadPoolExecutor(max_workers=8) as pool:
        senders = [(node, clean[node.pk]) for node in (fresh, faulty)] * 4
        senders.insert(5, (faulty, fault))
        jobs = [pool.submit(send, node, reported) for node, reported in senders]
        for job in jobs:
            job.result()

    # then: every heartbeat counted; unknown -> healthy once, unknown -> ... -> degraded
    counted = {
        node.pk: sum(
            NodeHeartbeatMinute.objects.filter(node=node).values_list("heartbeats", flat=True)
        )
        for node in (fresh, faulty)
    }
    assert counted == {fresh.pk: 20, faulty.pk: 25}
    assert [e["health"] for e in _health_events(fresh)] == ["healthy"]
    faulty_events = [e["health"] for e in _health_events(faulty)]
    assert faulty_events[-1] == "degraded" and faulty_events.count("degraded") == 1
    assert Node.objects.get(pk=faulty.pk).health == "degraded"
