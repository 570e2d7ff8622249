"""A provider with two nodes (each with its own agent key, bound to it), a buyer with a
raw lease on node A, and agents started as real processes against a live server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from marketplace import services as market
from marketplace.models import Lease, Order
from marketplace.services import OrderSpec
from providers import services as supply
from providers.models import Node, Site
from tests.marketplace.conftest import fund, offer

ROOT = Path(__file__).resolve().parents[2]
H100 = "NVIDIA H100 80GB HBM3"


def inventory(hostname: str, prefix: str, count: int = 2) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "gpus": [
            {
                "index": index,
                "uuid": f"GPU-{prefix}-{index:04d}",
                "name": H100,
                "memory_total_mib": 81559,
                "interconnect": "nvlink",
                "nvlink_links": 18,
            }
            for index in range(count)
        ],
    }


@dataclass
class AgentNode:
    node: Node
    key: str
    inventory: dict[str, Any]


SITE = "Hall N"


def agent_node(org: Any, hostname: str, prefix: str) -> AgentNode:
    if not Site.objects.filter(organization=org, name=SITE).exists():
        supply.site_create(organization=org, name=SITE, region="us-east", country="US")
    created = supply.agent_key_create(organization=org, name=hostname)
    inv = inventory(hostname, prefix)
    inv["site"] = SITE
    node = supply.node_register(
        organization=org,
        hostname=hostname,
        inventory=inv,
        site_name=SITE,
        api_key_id=created.agent_key.api_key_id,
        inventory_source="file",
    )
    supply.node_heartbeat_record(
        organization=org,
        node_id=node.pk,
        samples=[{"uuid": g["uuid"], "ecc_uncorrected": 0} for g in inv["gpus"]],
    )
    node.refresh_from_db()
    return AgentNode(node=node, key=created.raw_key, inventory=inv)


@dataclass
class World:
    cast: Any
    a: AgentNode
    b: AgentNode
    lease: Lease
    order: Order
    buyer: APIClient
    other_buyer: APIClient

    def runs_url(self, lease_id: int | None = None) -> str:
        return f"/api/v1/leases/{lease_id or self.lease.pk}/runs"


@pytest.fixture
def world(cast: Any) -> World:
    a = agent_node(cast.provider_a, "node-a", f"{cast.provider_a.pk}-a")
    b = agent_node(cast.provider_a, "node-b", f"{cast.provider_a.pk}-b")
    offer(a.node, count=2)  # only node A sells: the lease lands there
    fund(cast.buyer_a, 1_000_000_000)
    order = market.order_place(
        organization=cast.buyer_a,
        spec=OrderSpec(
            gpus_per_node=1,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=3_000_000,
            duration_seconds=3600,
        ),
    )
    market.matching_round()
    lease = Lease.objects.get(order=order)
    assert lease.node_id == a.node.pk and lease.state == Lease.State.ACTIVE
    return World(
        cast=cast,
        a=a,
        b=b,
        lease=lease,
        order=order,
        buyer=cast.client(cast.buyer_a),
        other_buyer=cast.client(cast.buyer_b),
    )


def agent_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def wait_for(check: Callable[[], Any], *, timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(every)


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    log: Path
    work_dir: Path
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        return self.process.returncode


def agent_start(
    server: str,
    node: AgentNode,
    folder: Path,
    *,
    wait: int = 5,
    manage: bool = False,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> AgentProcess:
    """Start ``python -m providers.agent`` for a node, as its own process group.
    ``manage``: as ``manage.py run_agent`` with ``--key-file`` (else ``python -m
    providers.agent --key``); ``env``: added to the agent's environment; ``prefix``:
    what the command runs under (``ip netns exec NAME``)."""
    name = node.inventory["hostname"]
    inventory_file = folder / f"{name}.json"
    inventory_file.write_text(json.dumps(node.inventory))
    work_dir = folder / f"work-{name}"
    log = folder / f"{name}.log"
    program = (
        [sys.executable, "manage.py", "run_agent"]
        if manage
        else [sys.executable, "-m", "providers.agent"]
    )
    key = ["--key", node.key]
    if manage:
        key_file = folder / f"{name}.key"
        key_file.write_text(node.key + "\n")
        key_file.chmod(0o600)
        key = ["--key-file", str(key_file)]
    process = subprocess.Popen(
        [
            *(prefix or []),
            *program,
            "--server",
            server,
            *key,
            "--inventory",
            str(inventory_file),
            "--work-dir",
            str(work_dir),
            "--interval",
            "5",
            "--wait",
            str(wait),
        ],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    agent = AgentProcess(process=process, log=log, work_dir=work_dir)
    wait_for(lambda: "registered as" in agent.output() or process.poll() is not None)
    if process.poll() is not None:
        raise AssertionError(agent.output())
    return agent


@pytest.fixture
def start_agent(live_server: Any, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start an agent for a node on this host, against the live server (loopback)."""
    started: list[AgentProcess] = []

    def start(node: AgentNode, **options: Any) -> AgentProcess:
        agent = agent_start(live_server.url, node, tmp_path, **options)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


# --- the S3-compatible blob store: a real S3 server (moto's) on loopback ----------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread of this process, on a free loopback port."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_blobs(settings: Any, s3_endpoint: str, tmp_path: Path) -> Any:
    """TANDEM_BLOB_STORE=s3 on a fresh bucket; returns a boto3 client of that server."""
    import boto3

    bucket = f"tandem-{tmp_path.name.lower().replace('_', '-')[-40:].strip('-')}"
    settings.TANDEM_BLOB_STORE = "s3"
    settings.BLOB_S3_BUCKET = bucket
    settings.BLOB_S3_ENDPOINT_URL = s3_endpoint
    settings.BLOB_S3_REGION = "us-east-1"
    settings.BLOB_S3_ACCESS_KEY_ID = "tandem-test"
    settings.BLOB_S3_SECRET_ACCESS_KEY = "tandem-test-secret"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="tandem-test",
        aws_secret_access_key="tandem-test-secret",
    )
    client.create_bucket(Bucket=bucket)
    return client


@pytest.fixture(params=["filesystem", "s3"])
def blob_store_kind(request: Any, settings: Any) -> str:
    """Both stores, for the tests where the store matters."""
    if request.param == "s3":
        request.getfixturevalue("s3_blobs")
    else:
        settings.TANDEM_BLOB_STORE = "filesystem"
    return str(request.param)


@pytest.fixture
def claimed(cast):  # type: ignore[no-untyped-def]
    """A fine-tune job's train run, claimed by node A's agent (node B idle): the
    nodes, the job, the run, A's agent client and the claim's answer."""
    from core.followers import followers_run_until_idle
    from marketplace.assignments.models import Assignment
    from marketplace.workloads.followers import WorkloadsFollower
    from tests.node.training import finetune_job

    a = agent_node(cast.provider_a, "proto-a", f"{cast.provider_a.pk}-pa")
    b = agent_node(cast.provider_a, "proto-b", f"{cast.provider_a.pk}-pb")
    offer(a.node, count=2)
    fund(cast.buyer_a, 50_000_000)
    job = finetune_job(cast.buyer_a, examples=24, epochs=1, batch_size=4, checkpoints=2)
    market.matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    run = Assignment.objects.get(kind="train", workload_id=job.public_id)
    client = agent_client(a.key)
    answer = client.post(f"/api/v1/agent/nodes/{a.node.pk}/assignments/{run.pk}/claim")
    assert answer.status_code == 200, answer.content
    return a, b, job, run, client, answer.json()


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def training_dirs(settings: Any, model_root: Path, tmp_path: Path) -> None:
    """The control plane's directories for training tests, and the tiny model built."""
    from runtime.registry import tiny_model_ensure

    settings.RUNTIME_MODEL_DIR = model_root
    settings.RUNTIME_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.ASSIGNMENT_BLOB_DIR = tmp_path / "blobs"
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"
    tiny_model_ensure()


@dataclass
class Hosts:
    """Starts each agent on a host of its own: ``start(node, env=...)``."""

    start: Callable[..., AgentProcess]
    server: str  # the server's URL as the hosts reach it
    addresses: dict[int, str]  # agent pid -> its host's address


@pytest.fixture
def hosts(settings: Any, tmp_path: Path) -> Iterator[Hosts]:
    """Each agent in a network namespace of its own, on a bridge to this one, where a
    live server listens on the bridge's address (tests/node/netns.py). Skipped, with
    the reason, only where ``ip netns add`` is not permitted."""
    from pytest_django.live_server_helper import LiveServer

    from tests.node import netns

    net = netns.Network()
    try:
        net.up()
    except netns.NetnsUnavailable as exc:
        net.down()
        pytest.skip(f"separate hosts need network namespaces: {exc}")
    started: list[AgentProcess] = []
    server = None
    try:
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, net.server_address]
        server = LiveServer(f"{net.server_address}:0")
        addresses: dict[int, str] = {}

        def start(node: AgentNode, **options: Any) -> AgentProcess:
            name = net.host()
            agent = agent_start(
                server.url, node, tmp_path, prefix=["ip", "netns", "exec", name], **options
            )
            started.append(agent)
            addresses[agent.process.pid] = net.addresses[name]
            return agent

        yield Hosts(start=start, server=server.url, addresses=addresses)
    finally:
        for agent in started:
            agent.stop()
        if server is not None:
            server.stop()
        net.down()
