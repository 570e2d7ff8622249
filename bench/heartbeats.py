"""Agent heartbeats over HTTP on PostgreSQL: heartbeats/s accepted by a real server
(gunicorn on loopback, the flood test's settings: 3 workers x 6 threads) from N
simulated nodes of 8 GPUs, each with its own agent key and persistent connection,
beside the same requests against a Django view that does no work, served by the same
server in the same run: the lower bound for the web stack on this machine.

Two loads per target, each for the same time:

- goal: open loop on a fixed schedule (like tests/providers/test_heartbeat_flood.py):
  each node sends rate/N heartbeats a second; a beat more than a second late is
  dropped by the client and counted. Accepted/s, p50/p99 latency.
- capacity: closed loop, each node sends its next request as soon as the last is
  answered: the most this machine serves (client and server share its cores).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/heartbeats.py [--quick]

Runs in a throwaway database (test_<name>), created and dropped here. The CPU each
side used (gunicorn workers, their PostgreSQL backends) is read from /proc.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# procstat sits beside this file: on the path also when gunicorn imports this module.
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")

import django

django.setup()

from django.db import connection, connections
from django.test.utils import setup_test_environment
from procstat import backend_pids, cpu_seconds, worker_pids

# The flood test's keep-alive agent client: the same client measures both.
from tests.providers.test_heartbeat_flood import AgentConnection as Connection
from tests.providers.test_heartbeat_flood import _free_port as free_port

GPUS = 8
BASELINE_PATH = "/bench/noop"


def application() -> Any:
    """The server under test (gunicorn ``bench.heartbeats:application()``): the
    project's WSGI application, plus the do-nothing baseline view at the end of the
    URL list (so the agent routes resolve exactly as in production)."""
    from django.http import HttpRequest, HttpResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    from config import urls
    from config.wsgi import application as wsgi_application

    @csrf_exempt
    def noop(request: HttpRequest) -> HttpResponse:
        request.body  # read the body, as the heartbeat does  # noqa: B018
        return HttpResponse(b'{"ok": true}', content_type="application/json")

    urls.urlpatterns.append(path(BASELINE_PATH.lstrip("/"), noop))
    return wsgi_application


def database_url() -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s["HOST"] or "127.0.0.1"
    return f"postgres://{s['USER']}{password}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


def make_nodes(count: int) -> list[tuple[str, str, bytes]]:
    """(heartbeat path, agent key, one body) per node; each node has its own key."""
    from core import services as core
    from providers import services

    provider = core.org_create(name="bench provider", kind="provider")
    nodes = []
    for n in range(count):
        created = services.agent_key_create(organization=provider, name=f"n{n}")
        key = created.raw_key
        node = services.node_register(  # bound to its key, as the agent's first call does
            organization=provider,
            hostname=f"bench-{n}",
            api_key_id=created.agent_key.api_key_id,
            inventory={
                "driver_version": "550.54.15",
                "cuda_version": "12.4",
                "gpus": [
                    {
                        "index": g,
                        "uuid": f"GPU-b{n}-{g:04d}",
                        "name": "NVIDIA H100 80GB HBM3",
                        "memory_total_mib": 81559,
                    }
                    for g in range(GPUS)
                ],
            },
        )
        body = json.dumps(
            {
                "gpus": [
                    {
                        "uuid": f"GPU-b{n}-{g:04d}",
                        "utilization_pct": (n * 7 + g) % 101,
                        "memory_used_mib": 1000 * g,
                        "temperature_c": 60 + g,
                        "power_mw": 300_000 + n,
                        "ecc_corrected": 0,
                        "ecc_uncorrected": 0,
                        "xid_events": [],
                    }
                    for g in range(GPUS)
                ]
            }
        ).encode()
        nodes.append((f"/api/v1/agent/nodes/{node.pk}/heartbeat", key, body))
    return nodes


def run_load(
    port: int,
    nodes: list[tuple[str, str, bytes]],
    *,
    baseline: bool,
    seconds: float,
    rate: float | None,
) -> dict[str, Any]:
    """Every node on its own thread and connection. ``rate`` None: closed loop."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[tuple[int, bytes]] = []
    dropped = 0
    per_node = None if rate is None else rate / len(nodes)
    start = time.monotonic() + 0.5

    def simulate(path: str, key: str, body: bytes) -> None:
        nonlocal dropped
        conn = Connection(port)
        request = Connection.request(BASELINE_PATH if baseline else path, key, body)
        mine: list[float] = []
        beat = 0
        while True:
            now = time.monotonic()
            if per_node is not None:
                due = start + beat / per_node
                beat += 1
                if due >= start + seconds:
                    break
                if now > due + 1:
                    with lock:
                        dropped += 1
                    continue
                if due > now:
                    time.sleep(due - now)
            elif now >= start + seconds:
                break
            elif now < start:
                time.sleep(start - now)
            sent = time.monotonic()
            try:
                status, payload = conn.exchange(request)
            except OSError as exc:
                conn.close()
                conn = Connection(port)
                status, payload = 0, str(exc).encode()
            if status == 200:
                mine.append(time.monotonic() - sent)
            else:
                with lock:
                    errors.append((status, payload[:200]))
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=simulate, args=node) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    latencies.sort()
    return {
        "ok_per_s": round(len(latencies) / elapsed, 1),
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": repr(errors[0]) if errors else None,
        "dropped": dropped,
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
    }


def measured(
    port: int,
    master: int,
    db_name: str,
    nodes: list[tuple[str, str, bytes]],
    **load: Any,
) -> dict[str, Any]:
    """``run_load`` with the CPU milliseconds per accepted request of the server's
    workers and of their database backends."""
    workers, backends = worker_pids(master), backend_pids(connection, db_name)
    before = cpu_seconds(workers), cpu_seconds(backends)
    result = run_load(port, nodes, **load)
    after = cpu_seconds(workers), cpu_seconds(backends)
    served = max(result["ok"], 1)
    result["web_cpu_ms"] = round(1000 * (after[0] - before[0]) / served, 2)
    result["db_cpu_ms"] = round(1000 * (after[1] - before[1]) / served, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--nodes", type=int, default=50, help="simulated nodes")
    parser.add_argument("--rate", type=float, default=1000, help="goal heartbeats/s")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=6, help="threads per worker")
    args = parser.parse_args()
    seconds = 3 if args.quick else 10
    if connection.vendor != "postgresql":
        sys.exit("bench/heartbeats.py measures PostgreSQL: set DATABASE_URL=postgres://...")

    setup_test_environment()
    db_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    server: subprocess.Popen | None = None
    try:
        nodes = make_nodes(args.nodes)
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "LOG_LEVEL": "WARNING",
            "API_RATE_LIMIT_PER_MINUTE": "100000000",
            "DEBUG": "0",
            "SECURE_SSL_REDIRECT": "0",  # plain http on loopback
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "bench.heartbeats:application()",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(args.workers),
                "--worker-class",
                "gthread",
                "--threads",
                str(args.threads),
                "--keep-alive",
                "30",
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
                probe.request("POST", BASELINE_PATH, b"{}")
                if probe.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        # warm every worker's connections and prepared statements
        run_load(port, nodes, baseline=False, seconds=1, rate=None)
        run_load(port, nodes, baseline=True, seconds=1, rate=None)

        runs = {}
        for name, baseline, rate in [
            ("baseline_goal", True, args.rate),
            ("heartbeat_goal", False, args.rate),
            ("baseline_capacity", True, None),
            ("heartbeat_capacity", False, None),
        ]:
            runs[name] = measured(
                port, server.pid, db_name, nodes, baseline=baseline, seconds=seconds, rate=rate
            )
            print(name, json.dumps(runs[name]), flush=True)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        connections.close_all()
        connection.creation.destroy_test_db(db_name, verbosity=0)

    goal, capacity = runs["heartbeat_goal"], runs["heartbeat_capacity"]
    result = {
        "heartbeats_per_s": goal["ok_per_s"],
        "goal_per_s": args.rate,
        "errors": goal["errors"] + capacity["errors"],
        "dropped_by_client": goal["dropped"],
        "p50_ms": goal["p50_ms"],
        "p99_ms": goal["p99_ms"],
        "baseline_per_s": runs["baseline_goal"]["ok_per_s"],
        "baseline_p50_ms": runs["baseline_goal"]["p50_ms"],
        "baseline_p99_ms": runs["baseline_goal"]["p99_ms"],
        "capacity_per_s": capacity["ok_per_s"],
        "baseline_capacity_per_s": runs["baseline_capacity"]["ok_per_s"],
        "ratio": round(capacity["ok_per_s"] / runs["baseline_capacity"]["ok_per_s"], 3),
        "web_cpu_ms_per_heartbeat": capacity["web_cpu_ms"],
        "db_cpu_ms_per_heartbeat": capacity["db_cpu_ms"],
        "web_cpu_ms_per_baseline": runs["baseline_capacity"]["web_cpu_ms"],
        "nodes": args.nodes,
        "gunicorn": f"{args.workers} workers x {args.threads} threads",
        "gpus_per_node": GPUS,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
