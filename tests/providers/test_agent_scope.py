"""An agent key lives on one GPU node: it registers and reports for that node and
reaches nothing else (no offers, sites, books or /v1/), and another node is a 404."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from core.models import ApiKey
from core.tenancy import Caller
from providers import services
from providers.models import AgentKey, GpuSample, Node
from tests.providers.conftest import inventory

pytestmark = pytest.mark.django_db

A = "/api/v1/agent"
P = "/api/v1/provider"


def _register(client, hostname, count=2, site=None):
    body = {"hostname": hostname, **inventory(count, prefix=f"GPU-{hostname}")}
    if site:
        body["site"] = site
    return client.post(f"{A}/nodes/register", body, format="json")


def _heartbeat(client, node_id, utilization=7):
    gpus = Node.objects.get(pk=node_id).gpus.values_list("uuid", flat=True)
    body = {"gpus": [{"uuid": uuid, "utilization_pct": utilization} for uuid in gpus]}
    return client.post(f"{A}/nodes/{node_id}/heartbeat", body, format="json")


@pytest.fixture
def agent(cast):
    """Provider A's agent key, registered as node gpu-01 (its first registration binds it)."""
    services.site_create(
        organization=cast.provider_a, name="Hall A", region="us-east", country="US"
    )
    client = cast.agent(cast.provider_a)
    registered = _register(client, "gpu-01", site="Hall A")
    assert registered.status_code == 200, registered.json()
    client.node_id = registered.json()["node_id"]
    return client


def test_an_agent_key_registers_and_heartbeats_its_node(agent):
    assert AgentKey.objects.get(api_key=agent.api_key).node_id == agent.node_id
    assert ApiKey.objects.get(pk=agent.api_key.pk).scope == "agent"

    beat = _heartbeat(agent, agent.node_id, utilization=42)
    again = _register(agent, "gpu-01", count=3)  # its own node: the inventory is refreshed

    assert beat.status_code == 200, beat.json()
    assert set(
        GpuSample.objects.filter(gpu__node_id=agent.node_id).values_list(
            "utilization_pct", flat=True
        )
    ) == {42}
    assert again.status_code == 200 and again.json()["node_id"] == agent.node_id
    assert Node.objects.get(pk=agent.node_id).gpus.filter(present=True).count() == 3


def test_a_bound_key_cannot_register_another_hostname(agent):
    response = _register(agent, "gpu-02")

    assert response.status_code == 409
    error = response.json()["error"]
    assert f"belongs to node {agent.node_id} (gpu-01)" in error["message"]
    assert error["details"] == {"node_id": agent.node_id, "hostname": "gpu-01"}
    assert not Node.objects.filter(hostname="gpu-02").exists()


def test_another_nodes_heartbeat_is_a_404_and_changes_nothing(cast, agent, make_node):
    other = make_node(cast.provider_a, "gpu-09", count=1)  # same org, another node

    response = _heartbeat(agent, other.pk)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    other.refresh_from_db()
    assert other.last_heartbeat_at is None
    assert not GpuSample.objects.filter(gpu__node=other).exists()


def test_an_agent_key_reaches_nothing_outside_the_agent_api(cast, agent):
    offer = services.offer_create(
        organization=cast.provider_a,
        node_id=agent.node_id,
        gpu_model="h100-sxm-80gb",
        gpu_count=1,
        price_per_gpu_hour_micros=2_000_000,
        kind="on_demand",
    )
    for method, url, body in [
        ("post", f"{P}/offers/{offer.pk}/pause", {}),
        ("post", f"{P}/offers/{offer.pk}/reprice", {"price_per_gpu_hour_micros": 1}),
        ("post", f"{P}/offers/{offer.pk}/withdraw", {"force": True}),
        ("post", f"{P}/sites/", {"name": "x", "region": "us-east", "country": "US"}),
        ("get", f"{P}/nodes/", None),
        ("post", f"{P}/agent-keys/", {"name": "more"}),
        ("get", "/api/v1/journal/", None),
        ("get", "/api/v1/statements/", None),
        ("get", "/api/v1/api-keys/", None),
        ("get", "/api/v1/prices/", None),  # public, yet not for an agent key
        ("get", "/v1/models", None),
        ("post", "/v1/chat/completions", {"model": "tandem/tiny-llama", "messages": []}),
    ]:
        response = getattr(agent, method)(url, body, format="json")
        assert response.status_code == 403, (method, url, response.content)
        assert "agent keys only reach the agent API" in response.content.decode(), url
    offer.refresh_from_db()
    assert (offer.status, offer.price_per_gpu_hour_micros) == ("active", 2_000_000)


def test_agent_keys_still_send_usage(cast, agent):
    response = agent.post("/api/v1/usage/batch", {"events": []}, format="json")
    assert response.status_code not in (401, 403), response.content


def test_an_agent_key_without_its_node_sends_no_usage(cast):
    unbound = cast.agent(cast.provider_a)

    response = unbound.post("/api/v1/usage/batch", {"events": []}, format="json")

    assert response.status_code == 403
    assert "has not registered its node" in response.json()["error"]["message"]


def test_the_caller_names_the_agent_keys_node(cast, agent):
    as_agent = Caller(
        organization=cast.provider_a, role="member", api_key_id=agent.api_key.pk, scope="agent"
    )
    as_org = Caller(organization=cast.provider_a, role="admin", api_key_id=agent.api_key.pk)
    unbound = cast.agent(cast.provider_a).api_key.pk

    assert as_agent.agent_node_id == agent.node_id
    assert as_org.agent_node_id is None
    assert Caller(cast.provider_a, "member", unbound, scope="agent").agent_node_id is None


def test_organization_keys_do_not_reach_the_agent_api(cast, agent):
    for role in ("admin", "member", "finance"):
        client = cast.client(cast.provider_a, role=role)
        registered = _register(client, "gpu-01")
        beat = _heartbeat(client, agent.node_id)
        assert (registered.status_code, beat.status_code) == (403, 403), role
        assert "agent keys only" in beat.json()["error"]["message"]


def test_a_revoked_agent_key_gets_401(cast, agent):
    admin = cast.client(cast.provider_a)
    assert admin.post(f"/api/v1/api-keys/{agent.api_key.pk}/revoke").status_code == 200

    assert _heartbeat(agent, agent.node_id).status_code == 401
    assert _register(agent, "gpu-01").status_code == 401


def test_the_migration_marks_existing_agent_keys_and_binds_single_nodes(cast, make_node):
    migration = importlib.import_module("providers.migrations.0002_agentkey_node")
    lone = services.agent_key_create(organization=cast.provider_a, name="lone")
    shared = services.agent_key_create(organization=cast.provider_a, name="shared")
    node = make_node(cast.provider_a, "lone-node", count=1)
    Node.objects.filter(pk=node.pk).update(api_key=lone.agent_key.api_key)
    for hostname in ("s-1", "s-2"):
        made = make_node(cast.provider_a, hostname, count=1)
        Node.objects.filter(pk=made.pk).update(api_key=shared.agent_key.api_key)
    org_key = cast.client(cast.provider_a).api_key
    # as before the migration: every key org-scoped, none bound
    ApiKey.objects.update(scope="org")
    AgentKey.objects.update(node=None)

    migration.mark_agent_keys(apps, None)

    scopes = dict(ApiKey.objects.values_list("pk", "scope"))
    assert scopes[lone.agent_key.api_key_id] == scopes[shared.agent_key.api_key_id] == "agent"
    assert scopes[org_key.pk] == "org"
    assert AgentKey.objects.get(pk=lone.agent_key.pk).node_id == node.pk
    assert AgentKey.objects.get(pk=shared.agent_key.pk).node_id is None  # binds on next register


def test_the_database_refuses_an_unknown_scope(cast):
    from django.db import IntegrityError, transaction

    key = cast.client(cast.provider_a).api_key
    with pytest.raises(IntegrityError), transaction.atomic():
        ApiKey.objects.filter(pk=key.pk).update(scope="root")
    assert ApiKey.objects.get(pk=key.pk).scope == "org"
