"""A batch against the same requests sent online, on the tiny model, in one run.

The node is served by a real agent (``python -m providers.agent``; its engines,
``runtime.serve``, are the agent's subprocesses), the gateway is gunicorn on
loopback, the relay Redis (the database's table without REDIS_URL). The same N
chat requests (``Tell me about GPU number i``, temperature 1, a seed each, at most
M tokens):

- online: sent to ``POST /v1/chat/completions``, 16 at a time (16 clients, each
  sending its next request when the last one answered), on the model's on-demand
  deployment;
- batch: one JSONL file uploaded with ``purpose=batch`` and ``POST /v1/batches``;
  timed from the create to ``completed``, the runner (a dramatiq worker in this
  process, as in the worker process) sending them on the model's interruptible
  deployment.

Both deployments are warmed first (an online request; a batch of one), so neither
figure holds an engine's load. Throughput is completion tokens (the gateway's counts,
from the answers) per second of wall time; ``ratio`` is batch / online (goal: 0.9).
Both engines get one torch thread (OMP_NUM_THREADS=1).

    DATABASE_URL=postgres://… REDIS_URL=redis://… DRAMATIQ_BROKER_URL=redis://… \\
        python bench/batches.py [--quick]

Runs in a throwaway database (test_<name>), created and dropped here. Ends with one
line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dramatiq
from django.db import connection
from django.test.utils import setup_test_environment

from bench.node import _platform, start_server
from core import services as core
from providers.models import Offer
from tests.marketplace.conftest import offer
from tests.node.conftest import agent_node

TINY = "tandem/tiny-llama"
CONCURRENCY = 16


def _body(index: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": TINY,
        "messages": [{"role": "user", "content": f"Tell me about GPU number {index}."}],
        "max_tokens": max_tokens,
        "temperature": 1,
        "seed": index,
    }


def _call(port: int, key: str, method: str, path: str, body: bytes | None, kind: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": kind},
        )
        answer = conn.getresponse()
        data = answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"{method} {path}: {answer.status} {data[:300]!r}")
    return json.loads(data)


def _json(port: int, key: str, method: str, path: str, body: Any = None) -> Any:
    raw = json.dumps(body).encode() if body is not None else None
    return _call(port, key, method, path, raw, "application/json")


def _upload(port: int, key: str, content: bytes) -> str:
    boundary = uuid.uuid4().hex
    parts = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="requests.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
    ).encode()
    body = parts + content + f"\r\n--{boundary}--\r\n".encode()
    found = _call(port, key, "POST", "/v1/files", body, f"multipart/form-data; boundary={boundary}")
    return str(found["id"])


def online(port: int, key: str, count: int, max_tokens: int) -> tuple[float, int]:
    """Seconds and completion tokens for ``count`` requests, CONCURRENCY at a time."""
    waiting: queue.Queue[int] = queue.Queue()
    for index in range(count):
        waiting.put(index)
    tokens = [0] * count
    failures: list[BaseException] = []

    def client() -> None:
        while True:
            try:
                index = waiting.get_nowait()
            except queue.Empty:
                return
            try:
                answer = _json(port, key, "POST", "/v1/chat/completions", _body(index, max_tokens))
                tokens[index] = answer["usage"]["completion_tokens"]
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return time.monotonic() - started, sum(tokens)


def batch(port: int, key: str, count: int, max_tokens: int) -> tuple[float, int]:
    """Seconds from the create to ``completed`` and completion tokens, for a batch of
    the same ``count`` requests."""
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"gpu-{index}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": _body(index, max_tokens),
            }
        )
        + "\n"
        for index in range(count)
    ).encode()
    file_id = _upload(port, key, lines)
    started = time.monotonic()
    created = _json(
        port,
        key,
        "POST",
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    deadline = started + 1800
    while True:
        found = _json(port, key, "GET", f"/v1/batches/{created['id']}")
        if found["status"] not in ("in_progress", "finalizing"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the batch did not finish: {found}")
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    if found["status"] != "completed" or found["request_counts"]["completed"] != count:
        raise RuntimeError(f"the batch ended {found['status']}: {found['request_counts']}")
    return elapsed, int(found["usage"]["output_tokens"])


def measure(count: int, max_tokens: int) -> dict[str, Any]:
    from django.conf import settings

    from runtime.registry import tiny_model_ensure

    tiny_model_ensure()
    provider = core.org_create(name="Bench batch provider", kind="provider")
    buyer = core.org_create(name="Bench batch buyer", kind="buyer")
    node = agent_node(provider, "bench-batch", "bench-batch")
    # The node's two GPUs: one on demand (online requests' deployment), one
    # interruptible (the batch's). The batch's deployment is started first: an
    # on-demand order may take an interruptible GPU too, and would if it were free.
    offer(node.node, count=1)
    offer(node.node, count=1, price=1_000_000, kind=Offer.Kind.INTERRUPTIBLE)
    key = core.api_key_create(organization=buyer, name="bench", role="admin").raw_key
    # The server's per-key limit (600 a minute by default) would throttle 1,000 online
    # requests sent in a minute or two; raised for the bench's own server only.
    os.environ["API_RATE_LIMIT_PER_MINUTE"] = "1000000"
    server, port = start_server(notify=True)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
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
    broker = dramatiq.get_broker()
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        batch(port, key, 1, 4)  # the interruptible deployment, started and warm
        deadline = time.monotonic() + 300
        while True:  # 503 while the node loads the online engine
            try:
                _json(port, key, "POST", "/v1/chat/completions", _body(0, 4))
                break
            except RuntimeError as exc:
                if "503" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        online_seconds, online_tokens = online(port, key, count, max_tokens)
        batch_seconds, batch_tokens = batch(port, key, count, max_tokens)
        online_rate = online_tokens / online_seconds
        batch_rate = batch_tokens / batch_seconds
        return {
            "requests": count,
            "max_tokens": max_tokens,
            "online_16_seconds": round(online_seconds, 2),
            "online_16_tokens_per_s": round(online_rate, 1),
            "online_16_requests_per_s": round(count / online_seconds, 2),
            "batch_seconds": round(batch_seconds, 2),
            "batch_tokens_per_s": round(batch_rate, 1),
            "batch_requests_per_s": round(count / batch_seconds, 2),
            "online_tokens": online_tokens,
            "batch_tokens": batch_tokens,
            "ratio": round(batch_rate / online_rate, 3),
            "relay": settings.INFERENCE_RELAY,
            "load_average": round(os.getloadavg()[0], 2),
        }
    finally:
        worker.stop()
        stop.set()
        platform.join(timeout=30)
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=30)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="200 requests instead of 1,000")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench/batches.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    setup_test_environment()
    creation = connection.creation
    original = connection.settings_dict["NAME"]
    creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        result = measure(200 if args.quick else 1000, 32 if args.quick else 64)
    finally:
        creation.destroy_test_db(original, verbosity=0)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
