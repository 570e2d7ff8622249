"""Load-based autoscaling of dedicated deployments (marketplace/workloads/autoscaling.py,
inflight.py, dedicated.py): in-flight requests counted at the gateway drive the
matching loop's tick to place replicas up to maxReplicas and, after the down window,
end the extras with their leases settled; the up window delays a scale up; a
request's count never outlives it; what is not offered is a 400 naming the field.

The tick runs on a controlled clock (``dedicated_tick(now=...)``); the load is put
in the real store (Redis here, the database on the embedded default) as the gateway
puts it, or made by real requests through the gateway to a stand-in node."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from core.followers import follower_run_once, registered
from core.ports import GenerationRequest
from marketplace.models import Lease, Order
from marketplace.services import matching_round
from marketplace.workloads import gateway
from marketplace.workloads.autoscaling import rate_limited
from marketplace.workloads.dedicated import dedicated_tick, replicas_live
from marketplace.workloads.errors import GenerationFailed
from marketplace.workloads.inflight import (
    TTL_SECONDS,
    DatabaseInflight,
    inflight,
    inflight_counts,
)
from marketplace.workloads.models import DedicatedDeployment, Deployment, InflightRequest
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity, wait_for
from tests.workloads.stand_in_node import StandInNode, five

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"
HARDWARE = "1x_h100-sxm-80gb"
QUESTION = [{"role": "user", "content": "What is 2 plus 3?"}]


def _project(org) -> str:  # type: ignore[no-untyped-def]
    return f"proj_{org.pk}"


def _endpoint(client, project: str) -> dict:  # type: ignore[no-untyped-def]
    answer = client.post(f"/v2/projects/{project}/endpoints", {"name": "chat"}, format="json")
    assert answer.status_code == 200, answer.json()
    return answer.json()


def _deploy(client, project: str, endpoint_id: str, autoscaling: dict):  # type: ignore[no-untyped-def]
    return client.post(
        f"/v2/projects/{project}/endpoints/{endpoint_id}/deployments",
        {
            "name": "main",
            "model": f"projects/public/models/{TINY}",
            "config": f"projects/{project}/configs/{HARDWARE}",
            "autoscaling": autoscaling,
        },
        format="json",
    )


def _autoscaled(cast, org=None, **autoscaling: Any) -> tuple[DedicatedDeployment, str]:  # type: ignore[no-untyped-def]
    """A deployment of ``org`` (buyer A) from 1 to 3 replicas and its URL."""
    org = org or cast.buyer_a
    client = cast.client(org)
    project = _project(org)
    endpoint = _endpoint(client, project)
    created = _deploy(
        client, project, endpoint["id"], {"minReplicas": 1, "maxReplicas": 3, **autoscaling}
    )
    assert created.status_code == 200, created.json()
    deployment = DedicatedDeployment.objects.get(public_id=created.json()["id"])
    return deployment, f"/v2/projects/{project}/endpoints/{endpoint['id']}/deployments/" + (
        deployment.public_id
    )


def _load(deployment: DedicatedDeployment, requests: int) -> None:
    """``requests`` in flight to the deployment's replicas, as the gateway counts them."""
    store = inflight()
    for n in range(1000):
        store.leave(dedicated_id=deployment.pk, request_id=f"load-{n}")
    for n in range(requests):
        store.enter(dedicated_id=deployment.pk, request_id=f"load-{n}")


def _replicas(deployment: DedicatedDeployment) -> int:
    return len(replicas_live(deployment))


def _match() -> None:
    """A matching round and the followers: open orders lease GPUs, leases are recorded."""
    matching_round(wait=False)
    for follower in registered():
        while follower_run_once(follower):
            pass


def _tick(at: datetime) -> None:
    dedicated_tick(now=at)


def test_load_places_replicas_up_to_max_and_not_beyond(cast):
    provider_with_capacity(cast.provider_a)  # 4 on-demand H100s
    buyer_credit(cast.buyer_a, 500_000_000)
    deployment, url = _autoscaled(cast)
    assert _replicas(deployment) == 1
    t0 = timezone.now()

    # given 20 requests in flight (16 per replica is the default target)
    _load(deployment, 20)
    _tick(t0)
    assert _replicas(deployment) == 2

    # when the load grows past what three replicas carry
    _load(deployment, 200)
    _tick(t0 + timedelta(seconds=5))
    _tick(t0 + timedelta(seconds=10))

    # then three, the most it may have, each a raw order of the buyer's own
    assert _replicas(deployment) == 3
    orders = Order.objects.filter(workload_id__startswith="endpoint:")
    assert orders.count() == 3 and all(o.reserved_micros > 0 for o in orders)
    shape = cast.client(cast.buyer_a).get(url).json()
    assert shape["desiredReplicas"] == 3
    assert shape["autoscaler"]["inflight_requests"] == 200
    assert shape["autoscaling"]["scalingMetrics"] == [
        {"name": "inflight_requests", "type": "METRIC_TARGET_TYPE_AVERAGE_VALUE", "target": 16.0}
    ]
    assert shape["autoscaling"]["scaleDownWindow"] == "300s"
    assert shape["autoscaling"]["scaleUpWindow"] == "0s"


def test_after_the_down_window_the_extra_replicas_end_with_their_leases_settled(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    deployment, _ = _autoscaled(cast)
    t0 = timezone.now()
    _load(deployment, 40)
    _tick(t0)
    _match()
    leased = [r for r in replicas_live(deployment) if r.lease_ref]
    assert len(leased) == 3
    oldest = min(leased, key=lambda r: r.pk)

    # when the load is gone, the replicas stay through the down window (5 minutes)
    _load(deployment, 0)
    _tick(t0 + timedelta(seconds=60))
    _tick(t0 + timedelta(seconds=359))
    assert _replicas(deployment) == 3

    # then, 5 minutes after the load went, back to minReplicas: the newest end
    _tick(t0 + timedelta(seconds=360))
    live = replicas_live(deployment)
    assert [r.pk for r in live] == [oldest.pk]
    ended = Lease.objects.filter(
        pk__in=[int(r.lease_ref) for r in leased if r.pk != oldest.pk]
    ).order_by("pk")
    assert len(ended) == 2
    for lease in ended:
        assert lease.state == Lease.State.ENDED
        # settled to the last whole minute of the replica's lease
        assert lease.gpu_seconds_billed > 0 and lease.gpu_seconds_billed % 60 == 0
    assert Lease.objects.get(pk=int(oldest.lease_ref)).state in Lease.LIVE_STATES


def test_the_up_window_delays_a_scale_up_until_the_load_held_through_it(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    deployment, url = _autoscaled(cast, scaleUpWindow="60s")
    assert cast.client(cast.buyer_a).get(url).json()["autoscaling"]["scaleUpWindow"] == "60s"
    t0 = timezone.now()

    _load(deployment, 40)
    _tick(t0)
    _tick(t0 + timedelta(seconds=30))
    assert _replicas(deployment) == 1
    # a dip inside the window starts it again
    _load(deployment, 0)
    _tick(t0 + timedelta(seconds=40))
    _load(deployment, 40)
    _tick(t0 + timedelta(seconds=45))
    _tick(t0 + timedelta(seconds=100))
    assert _replicas(deployment) == 1
    # held for the whole minute since the dip: up at once to what it asks
    _tick(t0 + timedelta(seconds=105))
    assert _replicas(deployment) == 3


def test_a_refused_replica_above_min_is_recorded_and_the_tick_goes_on(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    probe, _ = _autoscaled(cast)
    one_replica = Order.objects.get(workload_id__startswith="endpoint:").reserved_micros
    # buyer B's credit reserves one replica's order, not two
    buyer_credit(cast.buyer_b, one_replica + one_replica // 2)
    deployment, url = _autoscaled(cast, org=cast.buyer_b)
    t0 = timezone.now()

    _load(deployment, 40)
    _tick(t0)

    deployment.refresh_from_db()
    assert _replicas(deployment) == 1 and not deployment.failure_reason
    assert "could not be ordered" in deployment.scaling_error
    shape = cast.client(cast.buyer_b).get(url).json()
    assert shape["desiredReplicas"] == 3
    assert "could not be ordered" in shape["autoscaler"]["error"]
    assert "could not be ordered" in shape["status"]["message"]
    assert shape["status"]["state"] != "DEPLOYMENT_STATE_FAILED"

    # credit arrives: the next pass orders them and the refusal is cleared
    buyer_credit(cast.buyer_b, 500_000_000)
    _tick(t0 + timedelta(seconds=5))
    deployment.refresh_from_db()
    assert _replicas(deployment) == 3 and deployment.scaling_error == ""
    assert _replicas(probe) == 1


def _replica(deployment: DedicatedDeployment) -> Deployment:
    return replicas_live(deployment)[0]


def _generate(cast, replica: Deployment, request_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    chunks = gateway.inference_stream_on(
        organization=cast.buyer_a,
        deployment=replica,
        request=GenerationRequest(messages=QUESTION, max_tokens=8),
        request_id=request_id,
    )
    return [chunk.text for chunk in chunks]


def test_a_request_counts_while_in_flight_and_never_after_an_exception(cast, monkeypatch):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    deployment, _ = _autoscaled(cast)
    replica = _replica(deployment)

    def in_flight() -> int:
        return inflight_counts(dedicated_ids=[deployment.pk])[deployment.pk]

    # the relay fails at submission
    def refuse(**_: Any) -> None:
        raise ConnectionError("relay down")

    queues = gateway.relay()
    monkeypatch.setattr(queues, "submit", refuse)
    with pytest.raises(ConnectionError):
        _generate(cast, replica, "req-submit")
    assert in_flight() == 0
    monkeypatch.undo()

    # the node is lost mid-stream: counted while it streamed, not after
    seen: list[int] = []

    def replies(deployment: Deployment, request_id: str) -> Iterator[dict[str, Any]]:
        yield {"request": request_id, "accepted": True}
        seen.append(in_flight())
        yield {"request": request_id, "text": "Fi", "finish_reason": None}
        raise GenerationFailed("the node went quiet")

    monkeypatch.setattr(gateway, "_replies", replies)
    with pytest.raises(GenerationFailed):
        _generate(cast, replica, "req-lost")
    assert seen == [1] and in_flight() == 0

    # the engine refuses the request before accepting it
    def refused(deployment: Deployment, request_id: str) -> Iterator[dict[str, Any]]:
        yield {"request": request_id, "error": {"status": 400, "message": "no", "field": "x"}}

    monkeypatch.setattr(gateway, "_replies", refused)
    with pytest.raises(Exception, match="no"):
        _generate(cast, replica, "req-refused")
    assert in_flight() == 0

    # an embedding whose node answers nothing readable
    def garbled(deployment: Deployment, request_id: str) -> Iterator[dict[str, Any]]:
        yield {"request": request_id, "vectors": "none"}

    monkeypatch.setattr(gateway, "_replies", garbled)
    with pytest.raises(GenerationFailed):
        gateway.embeddings_create_on(
            organization=cast.buyer_a, deployment=replica, texts=["a"], request_id="emb-1"
        )
    assert in_flight() == 0


def test_requests_through_the_gateway_are_the_load_the_tick_samples(cast, settings):
    settings.INFERENCE_START_TIMEOUT_SECONDS = 20
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    deployment, url = _autoscaled(cast)
    counted: list[int] = []

    def answer(item: dict[str, Any]) -> list[dict[str, Any]]:
        # the node sees the request while the gateway counts it
        counted.append(inflight_counts(dedicated_ids=[deployment.pk])[deployment.pk])
        return five(item)

    node = StandInNode(answer=answer)
    node.start()
    client = cast.client(cast.buyer_a)
    try:
        with platform_running():
            wait_for(lambda: client.get(url).json()["status"]["readyReplicas"] == 1, timeout=30)
            endpoint_name = client.get(url).json()["name"].rsplit("/", 1)[0]
            chat = client.post(
                "/v1/chat/completions",
                {"model": endpoint_name, "messages": QUESTION},
                format="json",
            )
    finally:
        node.close()
    assert chat.status_code == 200, chat.json()
    assert counted == [1]
    assert inflight_counts(dedicated_ids=[deployment.pk]) == {deployment.pk: 0}


def test_the_embedded_defaults_store_counts_in_the_database_and_forgets_the_stale(cast, settings):
    settings.INFERENCE_RELAY = "database"
    store = inflight()
    assert isinstance(store, DatabaseInflight)
    store.enter(dedicated_id=7, request_id="a")
    store.enter(dedicated_id=7, request_id="a")  # once
    store.enter(dedicated_id=7, request_id="b")
    store.enter(dedicated_id=8, request_id="c")
    assert inflight_counts(dedicated_ids=[7, 8, 9]) == {7: 2, 8: 1, 9: 0}
    store.leave(dedicated_id=7, request_id="a")
    store.leave(dedicated_id=7, request_id="a")  # harmless twice
    # a request whose process died before its finally stops counting after the TTL
    InflightRequest.objects.filter(request_id="c").update(
        started_at=timezone.now() - timedelta(seconds=TTL_SECONDS + 1)
    )
    assert inflight_counts(dedicated_ids=[7, 8]) == {7: 1, 8: 0}


def test_a_metric_or_type_not_offered_is_a_400_naming_it(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    client = cast.client(cast.buyer_a)
    project = _project(cast.buyer_a)
    endpoint = _endpoint(client, project)
    metric = {"name": "inflight_requests", "type": "METRIC_TARGET_TYPE_AVERAGE_VALUE", "target": 4}
    cases = {
        "autoscaling.scalingMetrics[0].name": [{**metric, "name": "gpu_utilization"}],
        "autoscaling.scalingMetrics[0].type": [{**metric, "type": "METRIC_TARGET_TYPE_VALUE"}],
        "autoscaling.scalingMetrics[0].target": [{**metric, "target": 0}],
        "autoscaling.scalingMetrics[0].percentile": [{**metric, "percentile": "p99"}],
        "autoscaling.scalingMetrics[1]": [metric, metric],
    }
    for param, metrics in cases.items():
        answer = _deploy(
            client,
            project,
            endpoint["id"],
            {"minReplicas": 1, "maxReplicas": 3, "scalingMetrics": metrics},
        )
        assert answer.status_code == 400, (param, answer.json())
        assert answer.json()["error"]["param"] == param, (param, answer.json())
    pods = {"type": "SCALING_POLICY_TYPE_PODS", "value": 1, "periodSeconds": 60}
    rules = {
        "autoscaling.scaleUp.policies[0].type": {"scaleUp": {"policies": [{**pods, "type": "X"}]}},
        "autoscaling.scaleUp.policies[0].value": {"scaleUp": {"policies": [{**pods, "value": 0}]}},
        "autoscaling.scaleDown.policies[0].periodSeconds": {
            "scaleDown": {"policies": [{**pods, "periodSeconds": 1801}]}
        },
        "autoscaling.scaleDown.selectPolicy": {"scaleDown": {"selectPolicy": "SOMETIMES"}},
    }
    for param, given in rules.items():
        answer = _deploy(
            client, project, endpoint["id"], {"minReplicas": 1, "maxReplicas": 3, **given}
        )
        assert answer.status_code == 400, (param, answer.json())
        assert answer.json()["error"]["param"] == param, (param, answer.json())
    assert not DedicatedDeployment.objects.exists() and not Order.objects.exists()

    # a target of its own, and windows, are kept; an update with a bad type is refused
    created = _deploy(
        client,
        project,
        endpoint["id"],
        {"minReplicas": 1, "maxReplicas": 3, "scalingMetrics": [metric], "scaleDownWindow": "2m"},
    )
    assert created.status_code == 200, created.json()
    assert created.json()["autoscaling"]["scalingMetrics"][0]["target"] == 4.0
    assert created.json()["autoscaling"]["scaleDownWindow"] == "120s"
    url = f"/v2/projects/{project}/endpoints/{endpoint['id']}/deployments/{created.json()['id']}"
    bad = client.patch(
        url,
        {"autoscaling": {"scalingMetrics": [{**metric, "type": "METRIC_TARGET_TYPE_UTILIZATION"}]}},
        format="json",
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "autoscaling.scalingMetrics[0].type"
    # an update leaving maxReplicas out keeps the range
    narrowed = client.patch(url, {"autoscaling": {"minReplicas": 2}}, format="json")
    assert narrowed.status_code == 200, narrowed.json()
    assert (narrowed.json()["autoscaling"]["minReplicas"], narrowed.json()["desiredReplicas"]) == (
        2,
        2,
    )
    assert narrowed.json()["autoscaling"]["maxReplicas"] == 3
    deployment = DedicatedDeployment.objects.get()
    assert deployment.inflight_target == 4.0 and deployment.scale_down_window_seconds == 120

    # 9 in flight at 4 per replica: ceil(9 / 4) = 3
    _load(deployment, 9)
    _tick(timezone.now())
    assert _replicas(deployment) == 3


def test_another_projects_deployment_is_404(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    _, url = _autoscaled(cast)
    other = cast.client(cast.buyer_b)
    for method in ("get", "patch", "delete"):
        answer = getattr(other, method)(
            url, {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}, format="json"
        )
        assert answer.status_code == 404, (method, answer.json())
    assert cast.client(cast.buyer_a).get(url).status_code == 200


def test_scaled_to_zero_a_request_starts_a_replica_and_no_load_ends_it(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    client = cast.client(cast.buyer_a)
    project = _project(cast.buyer_a)
    endpoint = _endpoint(client, project)
    created = _deploy(client, project, endpoint["id"], {"minReplicas": 0, "maxReplicas": 2})
    assert created.status_code == 200, created.json()
    assert created.json()["status"]["state"] == "DEPLOYMENT_STATE_STOPPED"
    assert "scaled to zero" in created.json()["status"]["message"]
    deployment = DedicatedDeployment.objects.get()
    assert _replicas(deployment) == 0

    # a request is load: told to come back, and one replica is ordered
    asked = client.post(
        "/v1/chat/completions", {"model": endpoint["name"], "messages": QUESTION}, format="json"
    )
    assert asked.status_code == 503 and asked["Retry-After"]
    t0 = timezone.now()
    _tick(t0)
    assert _replicas(deployment) == 1
    # no more load: it stays the down window, then ends
    _tick(t0 + timedelta(seconds=200))
    assert _replicas(deployment) == 1
    _tick(t0 + timedelta(seconds=301))
    assert _replicas(deployment) == 0


def test_rate_policies_limit_each_step_over_their_period(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    # up: one replica a minute at most; down: half of them a minute, once stable 0s
    deployment, url = _autoscaled(
        cast,
        maxReplicas=4,
        scaleDownWindow="0s",
        scaleUp={
            "policies": [{"type": "SCALING_POLICY_TYPE_PODS", "value": 1, "periodSeconds": 60}]
        },
        scaleDown={
            "policies": [{"type": "SCALING_POLICY_TYPE_PERCENT", "value": 50, "periodSeconds": 60}],
            "selectPolicy": "SCALING_POLICY_SELECT_MAX",
        },
    )
    shape = cast.client(cast.buyer_a).get(url).json()["autoscaling"]
    assert shape["scaleUp"]["policies"][0]["value"] == 1
    assert shape["scaleDown"]["selectPolicy"] == "SCALING_POLICY_SELECT_MAX"
    t0 = timezone.now()

    _load(deployment, 200)  # asks for 4 at once
    _tick(t0)
    assert _replicas(deployment) == 2
    _tick(t0 + timedelta(seconds=30))
    assert _replicas(deployment) == 2  # its one replica of this minute is spent
    _tick(t0 + timedelta(seconds=61))
    _tick(t0 + timedelta(seconds=122))
    assert _replicas(deployment) == 4

    _load(deployment, 0)  # asks for 1: half of the 4 may go this minute
    _tick(t0 + timedelta(seconds=200))
    assert _replicas(deployment) == 2
    _tick(t0 + timedelta(seconds=230))
    assert _replicas(deployment) == 2
    _tick(t0 + timedelta(seconds=261))
    assert _replicas(deployment) == 1

    # an update with an empty rules object restores the default: one step
    cleared = cast.client(cast.buyer_a).patch(url, {"autoscaling": {"scaleUp": {}}}, format="json")
    assert cleared.status_code == 200 and "scaleUp" not in cleared.json()["autoscaling"]
    _load(deployment, 200)
    _tick(t0 + timedelta(seconds=300))
    assert _replicas(deployment) == 4


def test_the_rate_rules_as_kubernetes_applies_them(db):
    now = timezone.now()
    pods = {"type": "SCALING_POLICY_TYPE_PODS", "value": 2, "periodSeconds": 60}
    percent = {"type": "SCALING_POLICY_TYPE_PERCENT", "value": 100, "periodSeconds": 60}
    both = {"policies": [pods, percent]}
    # from 3: pods allows 5, percent 6; MAX takes 6, MIN 5
    assert rate_limited(10, current=3, rules=both, events=[], now=now) == 6
    assert (
        rate_limited(
            10,
            current=3,
            rules={**both, "selectPolicy": "SCALING_POLICY_SELECT_MIN"},
            events=[],
            now=now,
        )
        == 5
    )
    # two added 10 s ago count against the period: it started at 1
    added = [(now - timedelta(seconds=10), 2)]
    assert rate_limited(10, current=3, rules={"policies": [pods]}, events=added, now=now) == 3
    assert rate_limited(10, current=3, rules={"policies": [percent]}, events=added, now=now) == 3
    # disabled holds the direction; no policies: one step
    disabled = {"selectPolicy": "SCALING_POLICY_SELECT_DISABLED"}
    assert rate_limited(10, current=3, rules=disabled, events=[], now=now) == 3
    assert rate_limited(1, current=3, rules={}, events=[], now=now) == 1
    # down by percent rounds down the count that may stay: 50% of 5 leaves 2
    half = {"policies": [{**percent, "value": 50}]}
    assert rate_limited(0, current=5, rules=half, events=[], now=now) == 2


def test_an_unreachable_load_store_holds_the_count_and_the_tick_goes_on(cast, monkeypatch):
    from marketplace.workloads import dedicated

    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    deployment, _ = _autoscaled(cast, scaleToZeroWindow="30m")
    _load(deployment, 40)

    def down(**_: Any) -> dict[int, int]:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dedicated, "inflight_counts", down)
    _tick(timezone.now())
    assert _replicas(deployment) == 1
    # the rest of the pass still runs: the idle stop ends its replica
    _tick(timezone.now() + timedelta(minutes=31))
    assert _replicas(deployment) == 0
