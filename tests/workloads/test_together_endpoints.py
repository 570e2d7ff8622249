"""Dedicated endpoints on the market, through the API (marketplace/together/endpoints.py,
marketplace/workloads/dedicated.py): hardware from live offers; a deployment's
replicas as raw leases of the buyer, ready when their node's engine loaded, reached
by the endpoint's name, scaled by minReplicas, stopped when idle, billed per whole
minute; etags; what is not offered is a 400 naming it; another project's ids 404.

The node is the in-process stand-in (tests/workloads/stand_in_node.py); the real
agent serves the official client's journey (test_together_endpoints_client.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace.models import Lease, Order
from marketplace.workloads.dedicated import dedicated_tick
from marketplace.workloads.managed import whole_minutes_until
from marketplace.workloads.models import DedicatedDeployment, Deployment
from metering.models import UsageEvent
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity, wait_for
from tests.workloads.stand_in_node import StandInNode

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"
HARDWARE = "1x_h100-sxm-80gb"
QUESTION = [{"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture
def engines(settings) -> Iterator[StandInNode]:  # type: ignore[no-untyped-def]
    settings.INFERENCE_START_TIMEOUT_SECONDS = 20
    node = StandInNode()
    node.start()
    yield node
    node.close()


def _project(cast, org=None) -> str:  # type: ignore[no-untyped-def]
    return f"proj_{(org or cast.buyer_a).pk}"


def _endpoint(client, project: str, name: str = "support-bot") -> dict:  # type: ignore[no-untyped-def]
    answer = client.post(f"/v2/projects/{project}/endpoints", {"name": name}, format="json")
    assert answer.status_code == 200, answer.json()
    return answer.json()


def _deploy(client, project: str, endpoint_id: str, **fields):  # type: ignore[no-untyped-def]
    body = {
        "name": "main",
        "model": f"projects/public/models/{TINY}",
        "config": f"projects/{project}/configs/{HARDWARE}",
        "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        **fields,
    }
    return client.post(
        f"/v2/projects/{project}/endpoints/{endpoint_id}/deployments", body, format="json"
    )


def _live_leases(deployment: DedicatedDeployment) -> list[Lease]:
    refs = [
        int(r.lease_ref)
        for r in Deployment.objects.filter(dedicated=deployment).exclude(status="stopped")
        if r.lease_ref
    ]
    return list(Lease.objects.filter(pk__in=refs, state__in=Lease.LIVE_STATES))


def test_hardware_comes_from_the_live_on_demand_offers_with_the_fee(cast):
    provider_with_capacity(cast.provider_a)  # 4 on-demand H100s at 2.49, 4 interruptible
    answer = cast.client(cast.buyer_a).get("/v2/public/inference-instance-types")
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "list" and body["next_cursor"] is None
    by_id = {item["id"]: item for item in body["data"]}
    assert set(by_id) == {"1x_h100-sxm-80gb", "2x_h100-sxm-80gb", "4x_h100-sxm-80gb"}
    one = by_id["1x_h100-sxm-80gb"]
    assert one["gpuCount"] == 1 and one["gpuMemoryGib"] == 80 and one["gpuType"] == "H100_SXM"
    # the buyer's price: the ask plus the platform fee
    assert float(one["price_per_hour"]) > 2.49
    assert one["priceCentsPerHour"] == round(float(one["price_per_hour"]) * 100)
    assert one["regions"] == [
        {"name": "us-east", "headroom": {"relation": "RELATION_EQ", "value": 4}}
    ]
    assert by_id["4x_h100-sxm-80gb"]["regions"][0]["headroom"]["value"] == 1
    detail = cast.client(cast.buyer_a).get("/v2/public/inference-instance-types/2x_h100-sxm-80gb")
    assert detail.json()["gpuCount"] == 2
    missing = cast.client(cast.buyer_a).get("/v2/public/inference-instance-types/9x_nothing")
    assert missing.status_code == 404


def test_an_endpoint_serves_on_leased_replicas_scales_and_bills_whole_minutes(cast, engines):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    client = cast.client(cast.buyer_a)
    project = _project(cast)
    endpoint = _endpoint(client, project)
    assert endpoint["name"] == "buyer-a/support-bot" or endpoint["name"].endswith("/support-bot")

    created = _deploy(client, project, endpoint["id"])
    assert created.status_code == 200, created.json()
    assert created.json()["status"]["state"] == "DEPLOYMENT_STATE_PROVISIONING"
    deployment = DedicatedDeployment.objects.get()
    replica = Deployment.objects.get(dedicated=deployment)
    order = Order.objects.get(pk=int(replica.order_ref))
    # a raw, standing, open-ended on-demand order of the buyer: its credit is reserved
    assert order.workload_kind == Order.Workload.RAW and not order.managed
    assert order.workload_id == f"endpoint:{replica.public_id}"
    assert (order.gpus_per_node, order.gpu_models) == (1, ["h100-sxm-80gb"])
    assert order.duration_seconds is None and order.reserved_micros > 0

    detail_url = (
        f"/v2/projects/{project}/endpoints/{endpoint['id']}/deployments/{deployment.public_id}"
    )
    with platform_running():
        wait_for(
            lambda: client.get(detail_url).json()["status"]["state"] == "DEPLOYMENT_STATE_READY",
            timeout=30,
        )
        chat = client.post(
            "/v1/chat/completions",
            {"model": endpoint["name"], "messages": QUESTION},
            format="json",
        )
        assert chat.status_code == 200, chat.json()
        assert chat.json()["choices"][0]["message"]["content"] == "Five."
        assert chat.json()["model"] == endpoint["name"]
        # billed per minute of the lease: the tokens are counted, not metered
        assert not UsageEvent.objects.filter(type__startswith="tokens.").exists()
        replica.refresh_from_db()
        assert replica.requests_served == 1

        # scale up: a second replica on a lease of its own
        etag = client.get(detail_url).json()["etag"]
        up = client.patch(
            detail_url,
            {"etag": etag, "autoscaling": {"minReplicas": 2, "maxReplicas": 2}},
            format="json",
        )
        assert up.status_code == 200, up.json()
        wait_for(lambda: client.get(detail_url).json()["status"]["readyReplicas"] == 2, timeout=30)
        leases = _live_leases(deployment)
        assert len(leases) == 2 and len({lease.node_id for lease in leases}) == 1

        # three and a half minutes later, scale down: the newest lease ends on a whole minute
        for lease in leases:
            Lease.objects.filter(pk=lease.pk).update(
                started_at=lease.started_at - timedelta(seconds=210),
                window_start=lease.window_start - timedelta(seconds=210),
            )
        down = client.patch(
            detail_url, {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}}, format="json"
        )
        assert down.status_code == 200, down.json()
        ended = Lease.objects.get(pk=max(lease.pk for lease in leases))
        assert ended.state == Lease.State.ENDED
        assert ended.gpu_seconds_billed == 180  # 3 whole minutes of 1 GPU
        assert len(_live_leases(deployment)) == 1

        # delete: the last lease ends too
        gone = client.delete(detail_url)
        assert gone.status_code == 200 and gone.json() == {}
        assert _live_leases(deployment) == []
    last = Lease.objects.get(pk=min(lease.pk for lease in leases))
    assert last.state == Lease.State.ENDED and last.gpu_seconds_billed % 60 == 0
    assert client.get(detail_url).status_code == 404

    month = timezone.now().strftime("%Y-%m")
    report = client.get(f"/v1/billing/usage?month={month}").json()
    lines = [
        item
        for window in report["data"]
        for item in window["line_items"]
        if item["product_name"] == "Dedicated Endpoints - GPU Minutes"
    ]
    assert {line["attributes"]["lease_id"] for line in lines} == {str(ended.pk), str(last.pk)}
    three = next(line for line in lines if line["attributes"]["lease_id"] == str(ended.pk))
    assert three["quantity"] == "3" and float(three["cost"]) == pytest.approx(
        ended.billed_micros / 1e6
    )
    assert three["attributes"]["endpoint_id"] == endpoint["id"]


def test_an_idle_deployment_ends_its_leases_and_a_request_wakes_it(cast, engines):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    client = cast.client(cast.buyer_a)
    project = _project(cast)
    endpoint = _endpoint(client, project)
    created = _deploy(client, project, endpoint["id"], inactiveTimeout=30)
    assert created.json()["inactiveTimeout"] == 30
    deployment = DedicatedDeployment.objects.get()
    with platform_running():
        wait_for(
            lambda: (
                len(_live_leases(deployment)) == 1
                and Deployment.objects.filter(dedicated=deployment, status="ready").exists()
            ),
            timeout=30,
        )
    dedicated_tick(now=timezone.now() + timedelta(minutes=31))
    assert _live_leases(deployment) == []
    state = client.get(
        f"/v2/projects/{project}/endpoints/{endpoint['id']}/deployments/{deployment.public_id}"
    ).json()["status"]
    assert state["state"] == "DEPLOYMENT_STATE_STOPPED" and "next request" in state["message"]
    woken = client.post(
        "/v1/chat/completions", {"model": endpoint["name"], "messages": QUESTION}, format="json"
    )
    assert woken.status_code == 503 and woken["Retry-After"]
    dedicated_tick()
    assert Deployment.objects.filter(dedicated=deployment).exclude(status="stopped").count() == 1


def test_a_stale_etag_is_refused(cast):
    client = cast.client(cast.buyer_a)
    project = _project(cast)
    endpoint = _endpoint(client, project)
    url = f"/v2/projects/{project}/endpoints/{endpoint['id']}"
    fresh = client.patch(url, {"etag": endpoint["etag"], "name": "renamed"}, format="json")
    assert fresh.status_code == 200 and fresh.json()["name"].endswith("/renamed")
    stale = client.patch(url, {"etag": endpoint["etag"], "name": "again"}, format="json")
    assert stale.status_code == 409 and stale.json()["error"]["param"] == "etag"
    header = client.patch(url, {"name": "again"}, format="json", HTTP_IF_MATCH=endpoint["etag"])
    assert header.status_code == 412
    assert client.delete(f"{url}?etag={endpoint['etag']}").status_code == 409
    assert client.delete(f"{url}?etag={fresh.json()['etag']}").status_code == 200
    assert client.get(url).status_code == 404


def test_what_is_not_offered_is_a_400_naming_it(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    client = cast.client(cast.buyer_a)
    project = _project(cast)
    endpoint = _endpoint(client, project)
    cases = {
        "autoscaling.maxReplicas": {"autoscaling": {"minReplicas": 3, "maxReplicas": 1}},
        "autoscaling.scaleUp.x": {"autoscaling": {"minReplicas": 1, "scaleUp": {"x": 1}}},
        "autoscaling.scaleDownWindow": {
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "scaleDownWindow": "2h"}
        },
        "maxConcurrentRequestsPerReplica": {"maxConcurrentRequestsPerReplica": "8"},
        "placement": {"placement": {"profile": "p-1"}},
        "config": {"config": f"projects/{project}/configs/3x_h100-sxm-80gb"},
        "model": {"model": "projects/public/models/nobody/nothing"},
        "speculator": {"speculator": "x"},
        "inactiveTimeout": {"inactiveTimeout": 5},
        "placement.inline.regions[0]": {"placement": {"inline": {"regions": ["mars-1"]}}},
    }
    for param, fields in cases.items():
        answer = _deploy(client, project, endpoint["id"], **fields)
        assert answer.status_code in (400, 404), (param, answer.json())
        assert answer.json()["error"]["param"] == param, (param, answer.json())
    assert not DedicatedDeployment.objects.exists() and not Order.objects.exists()
    listing = client.get(f"/v2/projects/{project}/endpoints?filter=name:x")
    assert listing.status_code == 400 and listing.json()["error"]["param"] == "filter"
    bad = client.post(f"/v2/projects/{project}/endpoints", {"name": "a b"}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"


def test_the_order_books_refusal_comes_back_and_leaves_nothing(cast):
    provider_with_capacity(cast.provider_a)
    client = cast.client(cast.buyer_b)  # no credit
    project = _project(cast, cast.buyer_b)
    endpoint = _endpoint(client, project)
    answer = _deploy(client, project, endpoint["id"])
    assert answer.status_code == 402
    assert answer.json()["error"]["details"]["missing_micros"] > 0
    assert not DedicatedDeployment.objects.exists() and not Deployment.objects.exists()
    assert not Order.objects.exists()


def test_an_endpoint_with_deployments_is_deleted_after_them(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    client = cast.client(cast.buyer_a)
    project = _project(cast)
    endpoint = _endpoint(client, project)
    assert _deploy(client, project, endpoint["id"]).status_code == 200
    refused = client.delete(f"/v2/projects/{project}/endpoints/{endpoint['id']}")
    assert refused.status_code == 409 and "delete them first" in refused.json()["error"]["message"]
    listed = client.get(f"/v2/projects/{project}/endpoints").json()
    assert [e["id"] for e in listed["data"]] == [endpoint["id"]]
    assert listed["data"][0]["trafficSplit"][0]["weight"] == 1.0
    assert listed["data"][0]["deployments"][0]["hardware"] == HARDWARE


def test_another_projects_ids_are_404_on_every_route(cast):
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    owner = cast.client(cast.buyer_a)
    project = _project(cast)
    endpoint = _endpoint(owner, project)
    deployment = _deploy(owner, project, endpoint["id"]).json()
    other = cast.client(cast.buyer_b)
    theirs = _project(cast, cast.buyer_b)
    own_url = f"/v2/projects/{project}/endpoints/{endpoint['id']}"
    dep_url = f"{own_url}/deployments/{deployment['id']}"
    # their own project with the owner's ids, and the owner's project
    for base in (own_url, f"/v2/projects/{theirs}/endpoints/{endpoint['id']}"):
        deps = base.replace(own_url, own_url) + "/deployments"
        for method, url in (
            ("get", base),
            ("patch", base),
            ("delete", base),
            ("get", deps),
            ("post", deps),
            ("get", f"{deps}/{deployment['id']}"),
            ("patch", f"{deps}/{deployment['id']}"),
            ("delete", f"{deps}/{deployment['id']}"),
        ):
            answer = getattr(other, method)(url, {}, format="json")
            assert answer.status_code == 404, (method, url, answer.json())
    for method in ("get", "post"):
        answer = getattr(other, method)(f"/v2/projects/{project}/endpoints", {}, format="json")
        assert answer.status_code == 404
    chat = other.post(
        "/v1/chat/completions", {"model": endpoint["name"], "messages": QUESTION}, format="json"
    )
    assert chat.status_code == 404
    assert owner.get(dep_url).status_code == 200


def test_a_replica_is_billed_to_its_last_whole_minute():
    start = timezone.now()
    assert whole_minutes_until(start, start + timedelta(seconds=59)) == start
    assert whole_minutes_until(start, start + timedelta(seconds=61)) == start + timedelta(minutes=1)
    assert whole_minutes_until(start, start + timedelta(minutes=5)) == start + timedelta(minutes=5)
    assert whole_minutes_until(start, start - timedelta(seconds=3)) == start
