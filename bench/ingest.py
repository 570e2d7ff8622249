"""Usage ingestion over HTTP on PostgreSQL: sustained events/s accepted and stored by a
real server (gunicorn on loopback) taking batches of 1,000 events, beside raw COPY
of the same rows into the same table in the same run; and event-to-balance latency,
from the HTTP 200 of a small probe batch to the buyer's balance reflecting it (the
rating follower, ``manage.py run_follower billing.rating``, runs throughout).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/ingest.py [--quick]

Runs in a throwaway database (test_<name>), created and dropped here.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")

import django

django.setup()

import msgspec
from django.db import connection, connections
from django.test.utils import setup_test_environment
from procstat import backend_pids, cpu_seconds, worker_pids

from tests.providers.test_heartbeat_flood import AgentConnection
from tests.providers.test_heartbeat_flood import _free_port as free_port

BATCH = 1000
BUYERS = 8
LEASE_PRICE = 2_500_000
# Usage is accepted only for subjects the platform made: per buyer, leases and jobs
# and deployments of theirs (made by make_cast). The leases carry no hold, so rating
# bills their GPU-seconds into the balance (a held lease's are left to its hold, and
# the probe would wait for a debit that never comes), and they are 8-GPU leases
# running for 30 days, so what the bench sends stays within a lease's bound (its
# GPUs x live seconds).
SUBJECTS: dict[int, dict[str, list[str]]] = {}
MODELS = ("llama-3.1-8b", "qwen2.5-72b", "llama-3.1-405b")
TOKEN_TYPES = ("tokens.training", "tokens.evaluation", "tokens.prompt", "tokens.completion")


def database_url() -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s["HOST"] or "127.0.0.1"
    return f"postgres://{s['USER']}{password}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


def make_cast():
    from core import services as core
    from ledger import services as billing

    operator = core.org_create(name="bench operator", kind="both", is_operator=True)
    provider = core.org_create(name="bench provider", kind="provider")
    buyers = [core.org_create(name=f"bench buyer {n}", kind="buyer") for n in range(BUYERS)]
    probe = core.org_create(name="bench probe buyer", kind="buyer")
    for buyer in [*buyers, probe]:
        billing.credits_grant(
            organization=buyer,
            amount_micros=10**14,
            currency="USD",
            reason="bench float",
            transfer_id=f"bench-float-{buyer.pk}",
        )
    from tests.subjects import deployment_of, job_of, lease_unheld

    started = datetime.now(UTC) - timedelta(days=30)
    for buyer in [*buyers, probe]:
        SUBJECTS[buyer.pk] = {
            "lease": [
                lease_unheld(
                    buyer, provider, price=LEASE_PRICE, gpus=8, started_at=started
                ).usage_subject
                for _ in range(2)
            ],
            "job": [job_of(buyer).public_id for _ in range(5)],
            "deployment": [deployment_of(buyer).public_id for _ in range(3)],
        }
    key = core.api_key_create(organization=operator, name="bench", role="admin").raw_key
    return key, provider, buyers, probe


def event(n: int, tag: str, buyer: int, provider: int, rng: random.Random, now: str) -> dict:
    if n % 10 == 0:
        return {
            "id": f"{tag}{n}",
            "source": f"agent/{n % 16}",
            "type": "gpu.seconds",
            "subject": {"org": buyer, "lease": SUBJECTS[buyer]["lease"][n % 2]},
            "time": now,
            "quantity": rng.randint(1, 60),
            "dimensions": {
                "gpu_model": "h100-sxm-80gb",
                "provider": provider,
                "region": "eu-west",
                "lease_price_micros_per_hour": LEASE_PRICE,
            },
        }
    usage_type = TOKEN_TYPES[n % 4]
    dims = {"model": MODELS[n % 3], "region": "eu-west"}
    if usage_type in ("tokens.training", "tokens.evaluation"):
        dims["training_type"] = "lora-sft"
        subject = {"org": buyer, "job": SUBJECTS[buyer]["job"][n % 5]}
    else:
        subject = {"org": buyer, "deployment": SUBJECTS[buyer]["deployment"][n % 3]}
    return {
        "id": f"{tag}{n}",
        "source": f"runtime/{n % 16}",
        "type": usage_type,
        "subject": subject,
        "time": now,
        "quantity": rng.randint(1, 100_000),
        "dimensions": dims,
    }


def make_bodies(batches: int, tag: str, buyers, provider) -> list[bytes]:
    rng = random.Random(tag)
    now = datetime.now(UTC).isoformat()
    encode = msgspec.json.encode
    bodies = []
    for b in range(batches):
        events = [
            event(b * BATCH + i, tag, buyers[(b + i) % len(buyers)].pk, provider.pk, rng, now)
            for i in range(BATCH)
        ]
        bodies.append(encode({"events": events}))
    return bodies


class _Answer(msgspec.Struct):
    accepted: int
    duplicate: int
    rejected: int


_answer = msgspec.json.Decoder(_Answer)


class Client:
    """The flood test's minimal HTTP/1.1 client (the load generator shares the two
    cores with the server: what it spends, the server cannot), with answers read by
    msgspec down to the counts. gunicorn's sync workers close the connection after
    each response, so each request opens its own."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key

    def send(self, body: bytes) -> _Answer:
        request = AgentConnection.request("/api/v1/usage/batch", self.key, body)
        for attempt in range(3):
            connection = AgentConnection(self.port)
            try:
                status, data = connection.exchange(request)
            except OSError:  # ConnectionError included
                if attempt == 2:
                    raise
                continue
            finally:
                connection.close()
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
            return _answer.decode(data)
        raise AssertionError("unreachable")


def wait_for_server(port: int, key: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def run_load(port: int, key: str, bodies: list[bytes], clients: int) -> tuple[float, int]:
    queue = list(reversed(bodies))
    lock = threading.Lock()
    accepted = 0
    failures: list[BaseException] = []

    def worker() -> None:
        nonlocal accepted
        client = Client(port, key)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                answer = client.send(body)
                with lock:
                    accepted += answer.accepted
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return elapsed, accepted


def probe_latency(port: int, key: str, probe, provider, stop: threading.Event) -> list[float]:
    """Small batches for a buyer of its own: HTTP 200 -> its balance shows the amount."""
    from ledger import services as billing
    from ledger.models import Account, Balance
    from pricing.rating import rate_usage

    account = billing.account_open(organization=probe, kind=Account.Kind.CREDIT, currency="USD")
    client = Client(port, key)
    rng = random.Random(99)
    latencies: list[float] = []
    expected = Balance.objects.get(account=account).debits_posted
    n = 0
    try:
        while not stop.is_set():
            now = datetime.now(UTC).isoformat()
            events = [event(n + i, "probe", probe.pk, provider.pk, rng, now) for i in range(10)]
            n += 10
            expected += sum(
                rate_usage(
                    usage_type=e["type"],
                    quantity=e["quantity"],
                    dimensions=e["dimensions"],
                    at=datetime.now(UTC),
                ).amount_micros
                for e in events
            )
            client.send(msgspec.json.encode({"events": events}))
            sent = time.perf_counter()
            # Wait until rated; past 60 s record 60 s (a lower bound) rather than
            # losing the sample, so a lagging follower shows in the percentiles.
            while Balance.objects.get(account=account).debits_posted < expected:
                if time.perf_counter() - sent > 60:
                    break
                time.sleep(0.01)  # 10 ms resolution: polling costs the server CPU
            latencies.append(time.perf_counter() - sent)
            stop.wait(0.05)
    finally:
        connections.close_all()
    return latencies


def raw_copy(rows: int, buyers, provider) -> float:
    """COPY the same shape of rows, 1,000 per transaction, into the usage table."""
    from metering.models import UsageEvent

    table = UsageEvent._meta.db_table
    columns = (
        "producer_org_id, source, event_id, type, buyer_id, subject_kind, subject_id, "
        "occurred_at, recorded_at, period, quantity, dimensions, note"
    )
    rng = random.Random("raw")
    now = datetime.now(UTC)
    period = now.date().replace(day=1)
    prepared = []
    for n in range(rows):
        e = event(n, "raw", buyers[n % len(buyers)].pk, provider.pk, rng, now.isoformat())
        kind, subject = next((k, v) for k, v in e["subject"].items() if k != "org")
        prepared.append(
            (
                1,
                e["source"],
                e["id"],
                e["type"],
                e["subject"]["org"],
                kind,
                subject,
                now,
                now,
                period,
                e["quantity"],
                msgspec.json.encode(e["dimensions"]).decode(),
                "",
            )
        )
    connection.ensure_connection()
    raw = connection.connection
    start = time.perf_counter()
    for offset in range(0, rows, BATCH):
        with (
            raw.transaction(),
            raw.cursor() as cursor,
            cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
        ):
            for row in prepared[offset : offset + BATCH]:
                copy.write_row(row)
    return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn worker processes (one per core)"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.1,
        help="the rating follower's poll, seconds (shorter: lower latency, more CPU)",
    )
    args = parser.parse_args()
    batches = 30 if args.quick else 400
    if connection.vendor != "postgresql":
        sys.exit("bench/ingest.py measures PostgreSQL: set DATABASE_URL=postgres://...")

    setup_test_environment()
    db_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    processes: list[subprocess.Popen] = []
    try:
        key, provider, buyers, probe = make_cast()
        bodies = make_bodies(batches, "b", buyers, provider)
        warmup = make_bodies(6, "w", buyers, provider)
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "LOG_LEVEL": "WARNING",
            "API_RATE_LIMIT_PER_MINUTE": "100000000",
            "DEBUG": "0",
            # plain HTTP on loopback: no redirect to https
            "SECURE_SSL_REDIRECT": "0",
        }
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "config.wsgi:application",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    str(args.workers),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
            )
        )
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "run_follower",
                    "billing.rating",
                    "--interval",
                    str(args.interval),
                ],
                cwd=ROOT,
                env=env,
            )
        )
        wait_for_server(port, key, time.monotonic() + 60)
        run_load(port, key, warmup, args.clients)

        server, follower = processes
        web, backends = worker_pids(server.pid), backend_pids(connection, db_name)
        before = [cpu_seconds(web), cpu_seconds([follower.pid]), cpu_seconds(backends)]
        client_before = sum(os.times()[:2])
        stop = threading.Event()
        latencies: list[float] = []
        prober = threading.Thread(
            target=lambda: latencies.extend(probe_latency(port, key, probe, provider, stop))
        )
        prober.start()
        try:
            elapsed, accepted = run_load(port, key, bodies, args.clients)
        finally:
            stop.set()
            prober.join()
        after = [cpu_seconds(web), cpu_seconds([follower.pid]), cpu_seconds(backends)]
        cpu = {
            name: round(1000 * (a - b) / (accepted / BATCH), 1)
            for name, a, b in zip(("web", "rating", "postgres"), after, before, strict=True)
        }
        cpu["client"] = round(1000 * (sum(os.times()[:2]) - client_before) / (accepted / BATCH), 1)
        from core.followers import follower_position
        from core.models import Event
        from metering.models import UsageEvent

        stored = UsageEvent.objects.filter(event_id__startswith="b").count()
        drain_start = time.perf_counter()
        last = Event.objects.filter(stream_type="metering.usage").order_by("-position").first()
        while follower_position("billing.rating") < last.position:
            time.sleep(0.01)
        drain = time.perf_counter() - drain_start
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
        copy_rate = raw_copy(accepted, buyers, provider)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        connections.close_all()
        connection.creation.destroy_test_db(db_name, verbosity=0)

    latencies.sort()
    rate = accepted / elapsed
    result = {
        "events_per_s": round(rate),
        "stored_per_s": round(stored / elapsed),
        "events": accepted,
        "raw_copy_per_s": round(copy_rate),
        "ratio": round(rate / copy_rate, 3),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "latency_p99_ms": round(
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1
        )
        if latencies
        else None,
        "latency_samples": len(latencies),
        "rating_drain_after_load_s": round(drain, 2),
        # CPU ms per 1,000-event batch during the load, per process group (the
        # rating follower's is its Python; its queries are in postgres's).
        "cpu_ms_per_batch": cpu,
        "batch_size": BATCH,
        "clients": args.clients,
        "gunicorn_workers": args.workers,
        "follower_interval_s": args.interval,
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "started": (datetime.now(UTC) - timedelta(seconds=elapsed)).isoformat(timespec="seconds"),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
