"""Leased work on the node over loopback, on PostgreSQL: how fast a node's agent hears
of new work, and how long from a run's creation to its command running on the node.

- wake-up: an agent's blocking query (``GET …/assignments?index=N&wait=25``) is waiting
  when a run is created; the time from the creating transaction's commit to the
  query's answer. Measured with LISTEN/NOTIFY (the default on PostgreSQL) and with the
  plain re-read of the index every 0.25 s (SQLite's way), one server each.
- created -> claimed (the server's clock) and created -> started: a real agent
  (``python -m providers.agent``) runs the node; a run's command is
  ``sh -c 'date +%s.%N'``; the time from before ``run_create`` to the clock the command
  printed on the node (the same machine's clock).
- baseline, in the same run: starting the same command with ``subprocess.run`` directly
  (what the agent's driver must at least spend).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/node.py [--quick]

The server is gunicorn on loopback (1 worker, gthread, 8 threads). Runs in a throwaway
database (test_<name>), created and dropped here. Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")

import django

django.setup()

from django.db import connection
from django.test.utils import setup_test_environment

from core import services as core
from marketplace import services as market
from marketplace.assignments import services as assignments
from marketplace.assignments.models import Assignment, AssignmentLogLine
from marketplace.models import Lease
from marketplace.services import OrderSpec
from providers.agent import Client
from tests.marketplace.conftest import fund, offer
from tests.node.conftest import agent_node


def database_url() -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s["HOST"] or "127.0.0.1"
    return f"postgres://{s['USER']}{password}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "n": len(ordered),
    }


def start_server(notify: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "LOG_LEVEL": "WARNING",
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ASSIGNMENT_WAIT_NOTIFY": "1" if notify else "0",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--worker-class",
            "gthread",
            "--threads",
            "8",
            "--timeout",
            "60",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            probe.request("GET", "/healthz")
            probe.getresponse().read()
            return server, port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def world() -> tuple[Any, Any, Lease]:
    provider = core.org_create(name="Bench provider", kind="provider")
    buyer = core.org_create(name="Bench buyer", kind="buyer")
    node = agent_node(provider, "bench-node", "bench")
    offer(node.node, count=2)
    fund(buyer, 1_000_000_000)
    order = market.order_place(
        organization=buyer,
        spec=OrderSpec(
            gpus_per_node=1,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=3_000_000,
            duration_seconds=3600,
        ),
    )
    market.matching_round()
    return node, buyer, Lease.objects.get(order=order)


def measure_wakeups(port: int, node: Any, buyer: Any, lease: Lease, rounds: int) -> list[float]:
    client = Client(server=f"http://127.0.0.1:{port}", key=node.key)
    base = f"/api/v1/agent/nodes/{node.node.pk}/assignments"
    index = client.get(f"{base}?index=0&wait=0")["index"]
    latencies = []
    for _ in range(rounds):
        answered: dict[str, Any] = {}

        def wait(index: int = index, answered: dict[str, Any] = answered) -> None:
            answered["body"] = client.get(f"{base}?index={index}&wait=25", timeout=40)
            answered["at"] = time.monotonic()

        waiter = threading.Thread(target=wait)
        waiter.start()
        threading.Event().wait(0.3)  # let the query reach its wait
        run = assignments.run_create(organization=buyer, lease_id=lease.pk, command=["true"])
        committed = time.monotonic()
        waiter.join(timeout=30)
        assert answered["body"]["changed"], answered
        latencies.append(answered["at"] - committed)
        assignments.run_cancel(organization=buyer, lease_id=lease.pk, run_id=run.pk)
        index = client.get(f"{base}?index=0&wait=0")["index"]
    return latencies


def measure_starts(
    port: int, node: Any, buyer: Any, lease: Lease, rounds: int
) -> tuple[list[float], list[float]]:
    work = Path(tempfile.mkdtemp(prefix="bench-node-"))
    inventory = work / "inventory.json"
    inventory.write_text(json.dumps(node.inventory))
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "providers.agent",
            "--server",
            f"http://127.0.0.1:{port}",
            "--key",
            node.key,
            "--inventory",
            str(inventory),
            "--work-dir",
            str(work / "runs"),
            "--interval",
            "15",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    latencies = []
    claims = []
    try:
        for _ in range(rounds + 2):  # the first two warm the agent's and server's paths
            created = time.time()
            run = assignments.run_create(
                organization=buyer, lease_id=lease.pk, command=["sh", "-c", "date +%s.%N"]
            )
            deadline = time.monotonic() + 30
            while Assignment.objects.get(pk=run.pk).is_live:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {run.pk} did not end")
                time.sleep(0.01)
            line = AssignmentLogLine.objects.filter(assignment=run).order_by("seq").first()
            assert line is not None, f"run {run.pk} printed nothing"
            latencies.append(float(line.text) - created)
            ended = Assignment.objects.get(pk=run.pk)
            assert ended.claimed_at is not None
            claims.append((ended.claimed_at - ended.created_at).total_seconds())
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    return latencies[2:], claims[2:]


def measure_baseline(rounds: int) -> list[float]:
    latencies = []
    for _ in range(rounds):
        started = time.time()
        out = subprocess.run(["sh", "-c", "date +%s.%N"], capture_output=True, check=True)
        latencies.append(float(out.stdout) - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = parser.parse_args()
    rounds = 5 if args.quick else 20
    if connection.vendor != "postgresql":
        sys.exit("bench/node.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    setup_test_environment()
    creation = connection.creation
    original = connection.settings_dict["NAME"]
    creation.create_test_db(verbosity=0, autoclobber=True)
    result: dict[str, Any] = {}
    try:
        node, buyer, lease = world()
        for mode in ("notify", "poll"):
            server, port = start_server(notify=mode == "notify")
            try:
                result[f"wakeup_{mode}"] = percentiles(
                    measure_wakeups(port, node, buyer, lease, rounds)
                )
                print(f"wakeup_{mode}", json.dumps(result[f"wakeup_{mode}"]), flush=True)
                if mode == "notify":
                    starts, claims = measure_starts(port, node, buyer, lease, rounds)
                    result["created_to_claimed"] = percentiles(claims)
                    result["created_to_started"] = percentiles(starts)
                    print("created_to_started", json.dumps(result["created_to_started"]))
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
        result["baseline_spawn"] = percentiles(measure_baseline(rounds))
    finally:
        creation.destroy_test_db(original, verbosity=0)
    result["ratio"] = round(
        result["created_to_started"]["p50_ms"] / max(result["baseline_spawn"]["p50_ms"], 0.1), 1
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
