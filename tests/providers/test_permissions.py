from __future__ import annotations

import pytest

from providers import services
from providers.models import GpuSample, Offer
from tests.providers.conftest import beat, samples

pytestmark = pytest.mark.django_db

P = "/api/v1/provider"
A = "/api/v1/agent"


@pytest.fixture
def world(cast, make_node):
    """Provider B's site, node (with telemetry) and offer; provider A's own node."""
    node_b = make_node(cast.provider_b, "b-node")
    beat(node_b, samples=samples(node_b, utilization_pct=99))
    offer_b = services.offer_create(
        organization=cast.provider_b,
        node_id=node_b.pk,
        gpu_model="h100-sxm-80gb",
        gpu_count=2,
        price_per_gpu_hour_micros=1_000_000,
        kind="on_demand",
    )
    node_a = make_node(cast.provider_a, "a-node")
    return {"site": node_b.site_id, "node": node_b.pk, "offer": offer_b.pk, "node_a": node_a}


def _every_endpoint(world):
    site, node, offer = world["site"], world["node"], world["offer"]
    return [
        ("get", f"{P}/sites/", None),
        ("post", f"{P}/sites/", {"name": "x", "region": "us-east", "country": "US"}),
        ("get", f"{P}/sites/{site}", None),
        ("get", f"{P}/nodes/", None),
        ("get", f"{P}/nodes/{node}", None),
        ("get", f"{P}/nodes/{node}/telemetry", None),
        ("get", f"{P}/offers/", None),
        (
            "post",
            f"{P}/offers/",
            {
                "node_id": node,
                "gpu_model": "h100-sxm-80gb",
                "gpu_count": 1,
                "price_per_gpu_hour_micros": 1,
                "kind": "on_demand",
            },
        ),
        ("get", f"{P}/offers/{offer}", None),
        ("post", f"{P}/offers/{offer}/pause", None),
        ("post", f"{P}/offers/{offer}/resume", None),
        ("post", f"{P}/offers/{offer}/reprice", {"price_per_gpu_hour_micros": 5}),
        ("post", f"{P}/offers/{offer}/withdraw", {"force": True}),
        ("get", f"{P}/utilization", None),
        ("get", f"{P}/reliability", None),
        ("get", f"{P}/gpu-models", None),
        ("get", f"{P}/agent-keys/", None),
        ("post", f"{P}/agent-keys/", {"name": "x"}),
        ("post", f"{A}/nodes/register", {"hostname": "h", "gpus": []}),
        ("post", f"{A}/nodes/{node}/heartbeat", {"gpus": []}),
    ]


def _call(client, method, url, body):
    return (
        getattr(client, method)(url, body, format="json") if body else getattr(client, method)(url)
    )


def test_anonymous_callers_get_401_everywhere(cast, world):
    for method, url, body in _every_endpoint(world):
        response = _call(cast.anonymous, method, url, body)
        assert response.status_code == 401, (method, url)
        assert response.json()["error"]["code"] == "not_authenticated"


@pytest.mark.parametrize("role", ["admin", "member", "finance"])
def test_a_buyer_only_org_gets_403_everywhere(cast, world, role):
    buyer = cast.client(cast.buyer_a, role=role)
    for method, url, body in _every_endpoint(world):
        response = _call(buyer, method, url, body)
        assert response.status_code == 403, (method, url)
        assert response.json()["error"]["code"] == "forbidden"


def test_provider_a_cannot_see_or_change_provider_bs_things(cast, world):
    a = cast.client(cast.provider_a)
    site, node, offer = world["site"], world["node"], world["offer"]
    for method, url, body in [
        ("get", f"{P}/sites/{site}", None),
        ("get", f"{P}/nodes/{node}", None),
        ("get", f"{P}/nodes/{node}/telemetry", None),
        ("get", f"{P}/offers/{offer}", None),
        ("post", f"{P}/offers/{offer}/pause", None),
        ("post", f"{P}/offers/{offer}/resume", None),
        ("post", f"{P}/offers/{offer}/reprice", {"price_per_gpu_hour_micros": 5}),
        ("post", f"{P}/offers/{offer}/withdraw", {"force": True}),
        (
            "post",
            f"{P}/offers/",
            {
                "node_id": node,
                "gpu_model": "h100-sxm-80gb",
                "gpu_count": 1,
                "price_per_gpu_hour_micros": 1,
                "kind": "on_demand",
            },
        ),
    ]:
        response = _call(a, method, url, body)
        assert response.status_code == 404, (method, url, response.json())
    # A's agent key, bound to A's node, does not reach B's
    a_agent = cast.agent(cast.provider_a, node=world["node_a"])
    response = a_agent.post(f"{A}/nodes/{node}/heartbeat", {"gpus": []}, format="json")
    assert response.status_code == 404, response.json()

    # lists hold only A's own things
    assert a.get(f"{P}/sites/").json()["results"] == [
        {**a.get(f"{P}/sites/{world['node_a'].site_id}").json()}
    ]
    assert [n["id"] for n in a.get(f"{P}/nodes/").json()["results"]] == [world["node_a"].pk]
    assert a.get(f"{P}/offers/").json()["results"] == []
    # and B's offer and telemetry are untouched
    assert Offer.objects.get(pk=offer).status == "active"
    assert Offer.objects.get(pk=offer).price_per_gpu_hour_micros == 1_000_000
    assert set(
        GpuSample.objects.filter(gpu__node_id=node).values_list("utilization_pct", flat=True)
    ) == {99}


def test_a_gpu_of_another_org_cannot_be_registered(cast, world):
    from providers.models import Gpu

    b_gpu = Gpu.objects.filter(node_id=world["node"]).first()
    a = cast.agent(cast.provider_a)

    response = a.post(
        f"{A}/nodes/register",
        {
            "hostname": "thief",
            "gpus": [
                {"index": 0, "uuid": b_gpu.uuid, "name": b_gpu.name, "memory_total_mib": 81559}
            ],
        },
        format="json",
    )

    assert response.status_code == 409
    assert Gpu.objects.get(pk=b_gpu.pk).node_id == world["node"]


def test_finance_staff_of_a_provider_read_but_do_not_list_capacity(cast, world):
    finance = cast.client(cast.provider_a, role="finance")
    node_a = world["node_a"]

    assert finance.get(f"{P}/nodes/{node_a.pk}").status_code == 200
    response = finance.post(
        f"{P}/offers/",
        {
            "node_id": node_a.pk,
            "gpu_model": "h100-sxm-80gb",
            "gpu_count": 1,
            "price_per_gpu_hour_micros": 1,
            "kind": "on_demand",
        },
        format="json",
    )
    assert response.status_code == 403
    assert finance.post(f"{A}/nodes/{node_a.pk}/heartbeat", {}, format="json").status_code == 403


def test_only_admins_make_agent_keys_and_the_key_is_shown_once(cast, world):
    member = cast.client(cast.provider_a, role="member")
    admin = cast.client(cast.provider_a)

    assert member.post(f"{P}/agent-keys/", {"name": "r1"}, format="json").status_code == 403
    created = admin.post(f"{P}/agent-keys/", {"name": "r1"}, format="json")
    listed = admin.get(f"{P}/agent-keys/").json()["results"]

    assert created.status_code == 201 and created.json()["key"].startswith("tdm_")
    assert [k["name"] for k in listed] == ["r1"] and "key" not in listed[0]
    agent = cast.anonymous
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {created.json()['key']}")
    registered = agent.post(f"{A}/nodes/register", {"hostname": "r1", "gpus": []}, format="json")
    assert registered.status_code == 200, registered.json()
    heartbeat = f"{A}/nodes/{registered.json()['node_id']}/heartbeat"
    assert agent.post(heartbeat, {"gpus": []}, format="json").status_code == 200
    # revoked through core's API-key endpoint, the agent is refused at once
    revoked = admin.post(f"/api/v1/api-keys/{listed[0]['api_key_id']}/revoke")
    assert revoked.status_code == 200
    assert (
        agent.post(f"{A}/nodes/register", {"hostname": "h", "gpus": []}, format="json").status_code
        == 401
    )
    refused = agent.post(heartbeat, {"gpus": []}, format="json")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "authentication_failed"
