"""Together's control-plane calls on the demo's market: p50/p99 latency of the dedicated
endpoint calls (hardware list; endpoint create, list, get; deployment create, list,
get) and the GPU cluster calls (create, list, get), each against a baseline measured
in the same run: ``GET /v1/models``, an authenticated view that reads no table of the
market. Goal: each call within 50 ms at p99.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<db> python bench/together.py [--quick]

Runs in a throwaway database (test_<name>), created and dropped here, loaded with the
demo's market (``providers.demo`` and ``marketplace.demo``, as ``manage.py demo``
loads them: the 8x H100 node with its two offers, the buyer's settled and running
leases) and buyer credit. Requests go through the whole Django stack in this process
(``django.test.Client``: middleware, API-key auth, throttling, the view, PostgreSQL),
without a socket. Calls are interleaved round by round, so the neighbours' load falls
on all of them alike. Creates accumulate as a user's would: lists grow through the
run. Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")
os.environ["API_RATE_LIMIT_PER_MINUTE"] = "100000000"  # measured, not throttled

import django

django.setup()

from django.db import connection
from django.test import Client
from django.test.utils import setup_test_environment

GOAL_MS = 50.0


def load_market() -> tuple[str, str]:
    """The demo's market and a buyer's API key; returns (key, project id)."""
    from core import services as core
    from ledger import services as ledger
    from marketplace import demo as market
    from providers import demo as supply

    provider = core.org_create(name="Northlake Research Computing", kind="provider")
    buyer = core.org_create(name="Acme Robotics", kind="buyer")
    core.org_create(name="Tandem", kind="both", is_operator=True)
    ledger.credits_grant(
        organization=buyer,
        amount_micros=10**12,
        currency="USD",
        reason="bench credits",
        transfer_id=f"bench-credit-{buyer.pk}",
    )
    supply.load(provider=provider)
    market.load(buyer=buyer, provider=provider)
    created = core.api_key_create(organization=buyer, name="bench", role="admin")
    return created.raw_key, f"proj_{buyer.pk}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="30 rounds instead of 200")
    args = parser.parse_args()
    rounds = 30 if args.quick else 200

    setup_test_environment()
    db_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        key, project = load_market()
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        base = f"/v2/projects/{project}/endpoints"
        state: dict[str, Any] = {"n": 0}

        def ok(answer: Any) -> Any:
            if answer.status_code != 200:
                raise SystemExit(f"{answer.status_code}: {answer.content[:500]!r}")
            return answer.json()

        def post(path: str, body: dict[str, Any]) -> Any:
            return ok(client.post(path, json.dumps(body), content_type="application/json"))

        # One endpoint with a deployment to read, one cluster to read, before timing.
        endpoint = post(base, {"name": "bench-read"})
        deployment = post(
            f"{base}/{endpoint['id']}/deployments",
            {
                "name": "main",
                "model": "projects/public/models/tandem/tiny-llama",
                "config": f"projects/{project}/configs/1x_h100-sxm-80gb",
                "autoscaling": {"minReplicas": 1},
                "limit_price_per_gpu_hour": "3.00",
            },
        )
        # Deployments created while timing go to an endpoint of their own: the one read
        # keeps its one deployment, as an endpoint in use would.
        writes = post(base, {"name": "bench-write"})
        cluster_body = {
            "billing_type": "ON_DEMAND",
            "gpu_type": "H100_SXM",
            "num_gpus": 1,
            "region": "us-east",
            "limit_price_per_gpu_hour": "3.00",
        }
        cluster = post("/v1/compute/clusters", {"cluster_name": "bench-read", **cluster_body})

        def endpoint_create() -> Any:
            state["n"] += 1
            return post(base, {"name": f"bench-{state['n']}"})

        def deployment_create() -> Any:
            state["n"] += 1
            return post(
                f"{base}/{writes['id']}/deployments",
                {
                    "name": f"d{state['n']}",
                    "model": "projects/public/models/tandem/tiny-llama",
                    "config": f"projects/{project}/configs/1x_h100-sxm-80gb",
                    "autoscaling": {"minReplicas": 1},
                    "limit_price_per_gpu_hour": "3.00",
                },
            )

        def cluster_create() -> Any:
            state["n"] += 1
            return post("/v1/compute/clusters", {"cluster_name": f"c{state['n']}", **cluster_body})

        calls: dict[str, Callable[[], Any]] = {
            "baseline_models_list": lambda: ok(client.get("/v1/models")),
            "hardware_list": lambda: ok(client.get("/v2/public/inference-instance-types")),
            "endpoint_create": endpoint_create,
            "endpoint_list": lambda: ok(client.get(base)),
            "endpoint_get": lambda: ok(client.get(f"{base}/{endpoint['id']}")),
            "deployment_create": deployment_create,
            "deployment_list": lambda: ok(client.get(f"{base}/{endpoint['id']}/deployments")),
            "deployment_get": lambda: ok(
                client.get(f"{base}/{endpoint['id']}/deployments/{deployment['id']}")
            ),
            "cluster_create": cluster_create,
            "cluster_list": lambda: ok(client.get("/v1/compute/clusters")),
            "cluster_get": lambda: ok(client.get(f"/v1/compute/clusters/{cluster['cluster_id']}")),
        }
        for call in calls.values():  # warm: imports, caches, the first query plans
            call()
        timings: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                timings[name].append((time.perf_counter() - started) * 1000)
    finally:
        connection.creation.destroy_test_db(db_name, verbosity=0)

    result: dict[str, Any] = {}
    for name, values in timings.items():
        result[f"{name}_p50_ms"] = round(statistics.median(values), 2)
        result[f"{name}_p99_ms"] = round(percentile(values, 0.99), 2)
    measured = [name for name in calls if name != "baseline_models_list"]
    worst = max(measured, key=lambda name: result[f"{name}_p99_ms"])
    baseline = result["baseline_models_list_p99_ms"]
    result.update(
        {
            "rounds": rounds,
            "goal_p99_ms": GOAL_MS,
            "worst_call": worst,
            "worst_p99_ms": result[f"{worst}_p99_ms"],
            "all_within_goal": all(result[f"{n}_p99_ms"] <= GOAL_MS for n in measured),
            "ratio": round(result[f"{worst}_p99_ms"] / baseline, 2) if baseline else None,
            "load_average": round(os.getloadavg()[0], 2),
        }
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
