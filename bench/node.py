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

With ``--relay`` it measures inference through the relay instead: the tiny model's
deployment served by a real agent (its engine, ``runtime.serve``, a subprocess of the
agent), chat completions sent to the gateway over HTTP at 1 and 16 concurrent
requests; the baseline is the same engine (runtime/inference.py) called directly in
this process, the same prompts and seeds, rounds interleaved. Throughput is
completion tokens (the text's tokens, counted the same way for both) per second of
wall time; ``ratio`` is the smaller of relay / direct at 1 and at 16 (goal: 0.9).
Both engines get one torch thread (OMP_NUM_THREADS=1). Needs REDIS_URL for the
Redis relay; without it the relay runs on the database's table.

    DATABASE_URL=postgres://… REDIS_URL=redis://… python bench/node.py --relay [--quick]

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
            "40",
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


# --- inference through the relay -------------------------------------------------------

TINY = "tandem/tiny-llama"


def _platform(stop: threading.Event) -> None:
    """Matching and the followers, as run_matching and run_follower do."""
    from django.db import close_old_connections

    from core.followers import followers_run_until_idle

    try:
        while not stop.is_set():
            close_old_connections()
            market.matching_round(wait=False)
            followers_run_until_idle()
            stop.wait(0.1)
    finally:
        connection.close()


def _chat(port: int, key: str, index: int, max_tokens: int) -> tuple[int, str]:
    body = json.dumps(
        {
            "model": TINY,
            "messages": [{"role": "user", "content": f"Tell me about GPU number {index}."}],
            "max_tokens": max_tokens,
            "temperature": 1,
            "seed": index,
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        answer = conn.getresponse()
        data = json.loads(answer.read())
    finally:
        conn.close()
    if answer.status != 200:
        return answer.status, json.dumps(data)[:300]
    return 200, data["choices"][0]["message"]["content"]


def _round(
    generate: Any, concurrency: int, count_tokens: Any, cpu: dict[str, Any] | None = None
) -> float:
    """Completion tokens per second of ``concurrency`` requests at once. ``cpu``: the
    processes to account ({name: pids function}); their CPU seconds and the tokens
    are added to ``cpu["spent"]`` and ``cpu["tokens"]``."""
    from bench.procstat import cpu_seconds

    before = {name: cpu_seconds(pids()) for name, pids in (cpu or {}).get("pids", {}).items()}
    texts: list[str] = [""] * concurrency
    failures: list[BaseException] = []

    def one(index: int) -> None:
        try:
            texts[index] = generate(index)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if failures:
        raise failures[0]
    tokens = sum(count_tokens(text) for text in texts)
    if cpu is not None:
        for name, pids in cpu["pids"].items():
            spent = cpu_seconds(pids()) - before[name]
            cpu["spent"][name] = cpu["spent"].get(name, 0.0) + spent
        cpu["tokens"] += tokens
    return tokens / elapsed


def measure_relay(rounds: int, max_tokens: int) -> dict[str, Any]:
    import torch

    from runtime.datasets import tokenizer_for
    from runtime.inference import Engine, SamplingParams
    from runtime.registry import tiny_model_ensure

    torch.set_num_threads(1)
    tiny_model_ensure()
    provider = core.org_create(name="Bench relay provider", kind="provider")
    buyer = core.org_create(name="Bench relay buyer", kind="buyer")
    node = agent_node(provider, "bench-serve", "bench-serve")
    offer(node.node, count=2)
    key = core.api_key_create(organization=buyer, name="bench", role="admin").raw_key
    server, port = start_server(notify=True)
    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    inventory = work / "inventory.json"
    inventory.write_text(json.dumps(node.inventory))
    from django.conf import settings

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
        env={
            **os.environ,
            "TANDEM_MODEL_DIR": str(settings.RUNTIME_MODEL_DIR),
            "OMP_NUM_THREADS": "1",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stop = threading.Event()
    platform = threading.Thread(target=_platform, args=(stop,), daemon=True)
    platform.start()
    tokenizer = tokenizer_for(TINY)
    engine = Engine(model=TINY, max_batch=16)
    try:
        deadline = time.monotonic() + 300
        while True:  # 503 while the node loads the engine
            status, text = _chat(port, key, 0, 4)
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the deployment did not serve: {status} {text}")
            time.sleep(0.5)

        def direct(index: int) -> str:
            return engine.complete(
                messages=[{"role": "user", "content": f"Tell me about GPU number {index}."}],
                params=SamplingParams(max_tokens=max_tokens, temperature=1, seed=index),
            ).text

        def relayed(index: int) -> str:
            status, text = _chat(port, key, index, max_tokens)
            if status != 200:
                raise RuntimeError(f"relay answered {status}: {text}")
            return text

        def count(text: str) -> int:
            return len(tokenizer.encode(text))

        from bench.procstat import worker_pids

        def children(pid: int) -> list[int]:
            """Children of every thread of ``pid`` (the agent starts the engine from a
            supervisor thread)."""
            found: list[int] = []
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    found += [int(child) for child in (task / "children").read_text().split()]
                except FileNotFoundError:
                    continue
            return found

        # CPU of the 16-request rounds, per process (the engine's process is the
        # agent's child): where the relay's CPU goes, beside the engine's own.
        processes = {
            "server": lambda: worker_pids(server.pid),
            "agent": lambda: [agent.pid],
            "node_engine": lambda: children(agent.pid),
            "bench_process": lambda: [os.getpid()],
        }
        accounts = {
            name: {"pids": processes, "spent": {}, "tokens": 0} for name in ("direct", "relay")
        }
        figures: dict[str, list[float]] = {}
        for round_number in range(rounds + 1):  # the first round warms both paths
            for concurrency in (1, 16):
                for name, generate in (("direct", direct), ("relay", relayed)):
                    account = accounts[name] if concurrency == 16 and round_number else None
                    rate = _round(generate, concurrency, count, account)
                    figures.setdefault(f"{name}_{concurrency}", []).append(rate)
        result: dict[str, Any] = {
            f"{name}_tokens_per_s": round(statistics.median(rates[1:]), 1)
            for name, rates in figures.items()
        }
        result["ratio_1"] = round(
            result["relay_1_tokens_per_s"] / result["direct_1_tokens_per_s"], 3
        )
        result["ratio_16"] = round(
            result["relay_16_tokens_per_s"] / result["direct_16_tokens_per_s"], 3
        )
        result["ratio"] = min(result["ratio_1"], result["ratio_16"])
        # How each engine batched the 16-request rounds (sizes of the batches it ran).
        result["direct_batches_16"] = [size for size in engine.batch_sizes if size > 1][-6:]
        result["relay_batches_16"] = [
            int(line.split()[2])
            for line in AssignmentLogLine.objects.filter(
                text__startswith="engine batch:"
            ).values_list("text", flat=True)
            if int(line.split()[2]) > 1
        ][-6:]
        for name, account in accounts.items():
            result[f"{name}_16_cpu_ms_per_token"] = {
                process: round(1000 * spent / max(account["tokens"], 1), 3)
                for process, spent in account["spent"].items()
            }
        result["relay"] = settings.INFERENCE_RELAY
        result["load_average"] = round(os.getloadavg()[0], 2)
        result["max_tokens"] = max_tokens
        result["rounds"] = rounds
        return result
    finally:
        engine.close()
        stop.set()
        platform.join(timeout=30)
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=30)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument(
        "--relay", action="store_true", help="inference through the relay against the engine"
    )
    args = parser.parse_args()
    rounds = 5 if args.quick else 20
    if connection.vendor != "postgresql":
        sys.exit("bench/node.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    setup_test_environment()
    creation = connection.creation
    original = connection.settings_dict["NAME"]
    creation.create_test_db(verbosity=0, autoclobber=True)
    result: dict[str, Any] = {}
    if args.relay:
        try:
            quick = args.quick
            result = measure_relay(rounds=3 if quick else 7, max_tokens=160 if quick else 256)
        finally:
            creation.destroy_test_db(original, verbosity=0)
        print("RESULT " + json.dumps(result))
        return
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
