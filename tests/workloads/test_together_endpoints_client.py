"""A Together user's dedicated endpoint with the official ``together`` client (3.1.1)
against a live server and the demo node's agent: whoami -> models.list -> hardware
list -> endpoints.create + a deployment -> chat through the endpoint's name (served
by the engine on the leased node) -> delete ends the replica's lease -> its whole
minutes show in /v1/billing/usage. Another project's ids: 404 on every route.
Autoscaling between min and max (metric, windows, policies) set and read back typed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.workloads.conftest import together_client
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"


def test_a_together_user_serves_a_dedicated_endpoint_billed_per_minute(
    cast, live_server, demo_node_agent
):
    from together import Together

    from marketplace.models import Lease
    from marketplace.workloads.models import Deployment

    provider_with_capacity(cast.provider_a)
    demo_node_agent(cast.provider_a)  # the replica's engine serves there
    buyer_credit(cast.buyer_a, 500_000_000)
    key = cast.client(cast.buyer_a).raw_key
    project = together_client(live_server, key).whoami().project.id
    client = Together(
        base_url=live_server.url, api_key=key, project_id=project, max_retries=0, timeout=120
    )
    assert list(client.models.list()) == []

    hardware = client.endpoints.hardware.list().data
    one = next(h for h in hardware if h.gpu_count == 1)
    assert one.id == "1x_h100-sxm-80gb" and one.price_cents_per_hour > 249
    assert [r.name for r in one.regions] == ["us-east"]

    endpoint = client.endpoints.create(name="adder")
    assert endpoint.endpoint_type == "ENDPOINT_TYPE_DEDICATED" and endpoint.deployments == []
    deployment = client.endpoints.deployments.create(
        endpoint.id,
        name="main",
        model=f"projects/public/models/{TINY}",
        config=f"projects/{project}/configs/{one.id}",
        autoscaling={"min_replicas": 1, "max_replicas": 1},
    )
    assert deployment.status.state == "DEPLOYMENT_STATE_PROVISIONING"
    assert deployment.hardware == one.id

    with platform_running():
        ready = wait_for(
            lambda: (
                (
                    d := client.endpoints.deployments.retrieve(
                        deployment.id, endpoint_id=endpoint.id
                    )
                ).status.state
                == "DEPLOYMENT_STATE_READY"
                and d
            ),
            timeout=180,
        )
        assert ready.status.ready_replicas == 1
        listed = client.endpoints.retrieve(endpoint.id)
        assert listed.deployments[0].state == "DEPLOYMENT_STATE_READY"
        assert listed.deployments[0].estimated_effective_traffic_share == 1.0

        reply = client.chat.completions.create(
            model=endpoint.name,
            messages=[{"role": "user", "content": "What is 1 plus 2?"}],
            max_tokens=6,
        )
        assert reply.choices[0].message.content and reply.model == endpoint.name

        replica = Deployment.objects.get(dedicated__public_id=deployment.id)
        lease = Lease.objects.get(pk=int(replica.lease_ref))
        # two and a half minutes of the replica's lease have run
        Lease.objects.filter(pk=lease.pk).update(
            started_at=lease.started_at - timedelta(seconds=150),
            window_start=lease.window_start - timedelta(seconds=150),
        )
        client.endpoints.deployments.delete(deployment.id, endpoint_id=endpoint.id)
        lease.refresh_from_db()
        # Settled to its last whole minute: two, plus any the journey itself took on a
        # slow machine (the lease ran from its start to the delete in real time too).
        ran = (lease.ended_at - lease.started_at).total_seconds()
        assert lease.state == Lease.State.ENDED and ran >= 150
        assert lease.gpu_seconds_billed == int(ran // 60) * 60 * lease.gpu_count

    month = datetime.now(tz=UTC).strftime("%Y-%m")
    report = client.organization.usage.costs.list(month=month)
    lines = [
        item
        for window in report.data
        for item in window.line_items
        if item.attributes.get("lease_id") == str(lease.pk)
    ]
    assert len(lines) == 1 and lines[0].product_name == "Dedicated Endpoints - GPU Minutes"
    assert float(lines[0].quantity) == lease.gpu_seconds_billed / 60
    assert float(lines[0].cost) == pytest.approx(lease.billed_micros / 1e6)
    assert lines[0].attributes["endpoint_id"] == endpoint.id
    client.endpoints.delete(endpoint.id)
    assert list(client.endpoints.list()) == []


def test_another_projects_endpoints_are_404_through_the_client(cast, live_server):
    import together
    from together import Together

    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    owner_key = cast.client(cast.buyer_a).raw_key
    own_project = f"proj_{cast.buyer_a.pk}"
    owner = Together(
        base_url=live_server.url, api_key=owner_key, project_id=own_project, max_retries=0
    )
    endpoint = owner.endpoints.create(name="mine")
    deployment = owner.endpoints.deployments.create(
        endpoint.id,
        name="main",
        model=f"projects/public/models/{TINY}",
        config=f"projects/{own_project}/configs/1x_h100-sxm-80gb",
        autoscaling={"min_replicas": 1},
    )
    other_key = cast.client(cast.buyer_b).raw_key

    def calls(other: Together) -> list:  # type: ignore[type-arg]
        return [
            lambda: other.endpoints.retrieve(endpoint.id),
            lambda: other.endpoints.update(endpoint.id, name="stolen"),
            lambda: other.endpoints.delete(endpoint.id),
            lambda: list(other.endpoints.deployments.list(endpoint.id)),
            lambda: other.endpoints.deployments.create(
                endpoint.id, name="x", autoscaling={"min_replicas": 1}, model=TINY
            ),
            lambda: other.endpoints.deployments.retrieve(deployment.id, endpoint_id=endpoint.id),
            lambda: other.endpoints.deployments.update(
                deployment.id, endpoint_id=endpoint.id, autoscaling={"min_replicas": 0}
            ),
            lambda: other.endpoints.deployments.delete(deployment.id, endpoint_id=endpoint.id),
        ]

    for project in (own_project, f"proj_{cast.buyer_b.pk}"):
        other = Together(
            base_url=live_server.url, api_key=other_key, project_id=project, max_retries=0
        )
        for call in calls(other):
            with pytest.raises(together.NotFoundError):
                call()
    stranger = Together(
        base_url=live_server.url, api_key=other_key, project_id=own_project, max_retries=0
    )
    with pytest.raises(together.NotFoundError):
        list(stranger.endpoints.list())
    with pytest.raises(together.NotFoundError):
        stranger.endpoints.create(name="intruder")
    assert owner.endpoints.retrieve(endpoint.id).deployments[0].id == deployment.id
    # a stale etag: 409, and the client does not retry it
    stale = owner.endpoints.retrieve(endpoint.id).etag
    owner.endpoints.update(endpoint.id, etag=stale, visibility="VISIBILITY_INTERNAL")
    with pytest.raises(together.ConflictError):
        owner.with_options(max_retries=3).endpoints.update(endpoint.id, etag=stale, name="x")


def test_a_together_user_sets_autoscaling_between_min_and_max_through_the_client(cast, live_server):
    import together
    from together import Together

    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    project = f"proj_{cast.buyer_a.pk}"
    client = Together(
        base_url=live_server.url,
        api_key=cast.client(cast.buyer_a).raw_key,
        project_id=project,
        max_retries=0,
    )
    endpoint = client.endpoints.create(name="scaled")
    metric = {"name": "inflight_requests", "type": "METRIC_TARGET_TYPE_AVERAGE_VALUE", "target": 8}
    deployment = client.endpoints.deployments.create(
        endpoint.id,
        name="main",
        model=f"projects/public/models/{TINY}",
        config=f"projects/{project}/configs/1x_h100-sxm-80gb",
        autoscaling={
            "min_replicas": 1,
            "max_replicas": 3,
            "scaling_metrics": [metric],
            "scale_down_window": "2m",
            "scale_up": {
                "policies": [{"type": "SCALING_POLICY_TYPE_PODS", "value": 1, "period_seconds": 60}]
            },
        },
    )
    scaling = deployment.autoscaling
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 3)
    assert scaling.scaling_metrics[0].name == "inflight_requests"
    assert scaling.scaling_metrics[0].target == 8
    assert (scaling.scale_up_window, scaling.scale_down_window) == ("0s", "120s")
    assert scaling.scale_up.policies[0].period_seconds == 60
    assert deployment.desired_replicas == 1
    with pytest.raises(together.BadRequestError) as refused:
        client.endpoints.deployments.create(
            endpoint.id,
            name="other",
            model=f"projects/public/models/{TINY}",
            config=f"projects/{project}/configs/1x_h100-sxm-80gb",
            autoscaling={
                "min_replicas": 1,
                "max_replicas": 3,
                "scaling_metrics": [{**metric, "name": "ttft"}],
            },
        )
    assert refused.value.body["error"]["param"] == "autoscaling.scalingMetrics[0].name"
