from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.models import Event
from providers import selectors, services
from providers.agent import Agent, AgentError
from providers.models import GpuSample, Node, NodeHeartbeatMinute
from tests.providers.fake_nvml import FakeGpu, FakeNvml

ROOT = Path(__file__).resolve().parents[2]


def _types(node: Node) -> list[str]:
    return list(
        Event.objects.filter(stream_id=f"node-{node.pk}")
        .order_by("version")
        .values_list("type", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_the_agent_registers_reports_the_fake_inventory_and_heartbeats(cast, live_server):
    # given: an agent key, a site, and a node whose NVML is the fake
    key = services.agent_key_create(organization=cast.provider_a, name="rack 1").raw_key
    services.site_create(
        organization=cast.provider_a, name="Hall A", region="eu-central", country="de"
    )
    fake = FakeNvml([FakeGpu(uuid=f"GPU-fake-{i}", utilization_pct=10 * i) for i in range(8)])
    agent = Agent(
        server=live_server.url,
        key=key,
        site="Hall A",
        hostname="gpu-07",
        nvml=fake,
        interval_seconds=0.01,
    )

    # when
    agent.start()
    agent.run(max_heartbeats=3)
    agent.stop()

    # then: the inventory is the fake's, the node is healthy and bound to the org
    node = Node.objects.get(pk=agent.node_id)
    assert node.organization == cast.provider_a
    assert node.site.region == "eu-central" and node.site.country == "DE"
    gpus = list(node.gpus.order_by("index"))
    assert [g.uuid for g in gpus] == [g.uuid for g in fake.gpus]
    assert {(g.name, g.memory_total_mib, g.model, g.interconnect) for g in gpus} == {
        ("NVIDIA H100 80GB HBM3", 81559, "h100-sxm-80gb", "nvlink")
    }
    assert (node.driver_version, node.cuda_version) == ("550.54.15", "12.4")
    assert node.health == Node.Health.HEALTHY
    assert node.api_key.agent_key.name == "rack 1"
    assert (
        sum(NodeHeartbeatMinute.objects.filter(node=node).values_list("heartbeats", flat=True)) == 3
    )
    assert GpuSample.objects.get(gpu__uuid="GPU-fake-7").utilization_pct == 70
    # three heartbeats, one health change (unknown -> healthy)
    assert _types(node) == ["NodeRegistered", "NodeHealthChanged"]

    # and the provider lists it: from API key to a healthy node with an offer
    portal = cast.client(cast.provider_a)
    created = portal.post(
        "/api/v1/provider/offers/",
        {
            "node_id": node.pk,
            "gpu_model": "h100-sxm-80gb",
            "gpu_count": 8,
            "price_per_gpu_hour_micros": 2_000_000,
            "kind": "on_demand",
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert [o.pk for o in selectors.offers_listed(gpu_model_at_least="a100-sxm-80gb")] == [
        created.json()["id"]
    ]


@pytest.mark.django_db(transaction=True)
def test_restarting_the_agent_keeps_the_node_and_reports_no_change(cast, live_server):
    key = services.agent_key_create(organization=cast.provider_a, name="rack 1").raw_key
    fake = FakeNvml([FakeGpu(uuid="GPU-r-1")])

    first = Agent(server=live_server.url, key=key, hostname="gpu-01", nvml=fake)
    first.start()
    second = Agent(server=live_server.url, key=key, hostname="gpu-01", nvml=fake)
    second.start()
    fake.gpus.append(FakeGpu(uuid="GPU-r-2"))  # a GPU added: the next registration says so
    second.register()

    assert first.node_id == second.node_id
    node = Node.objects.get(pk=first.node_id)
    assert _types(node) == ["NodeRegistered", "NodeInventoryChanged"]
    assert node.gpus.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_buyer_key_cannot_register_a_node(cast, live_server):
    buyer_key = cast.client(cast.buyer_a).raw_key
    agent = Agent(
        server=live_server.url,
        key=buyer_key,
        hostname="x",
        nvml=FakeNvml([FakeGpu(uuid="GPU-b-1")]),
    )

    with pytest.raises(AgentError) as caught:
        agent.start()

    assert caught.value.status == 403
    assert not Node.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_run_agent_with_an_inventory_file_registers_and_heartbeats(cast, live_server):
    key = services.agent_key_create(organization=cast.provider_a, name="demo").raw_key
    example = json.loads((ROOT / "providers/examples/inventory.json").read_text())
    services.site_create(
        organization=cast.provider_a, name=example["site"], region="us-east", country="US"
    )

    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "run_agent",
            "--server",
            live_server.url,
            "--key",
            key,
            "--inventory",
            "providers/examples/inventory.json",
            "--count",
            "2",
            "--interval",
            "0.05",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=False,
    )

    assert result.returncode == 0, result.stderr
    node = Node.objects.get(organization=cast.provider_a, hostname=example["hostname"])
    assert node.inventory_source == "file"
    assert node.gpus.filter(model="h100-sxm-80gb").count() == 8
    assert node.health == Node.Health.HEALTHY
    assert node.last_heartbeat_at is not None


def test_a_broken_inventory_file_is_named_with_its_line(tmp_path):
    bad = tmp_path / "inventory.json"
    bad.write_text('{\n  "gpus": [\n  oops\n]}')

    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "run_agent",
            "--server",
            "http://127.0.0.1:9",
            "--key",
            "k",
            "--inventory",
            str(bad),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=False,
    )

    assert result.returncode == 2
    assert "line 3" in result.stderr
