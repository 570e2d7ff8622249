"""Every portal page, as the person it is for sees it, over a busy month: server time
per page at the 95th percentile, beside a bare render of the same page's template in
the same run (over the context the view built, already evaluated: the template's own
cost, without the view's queries).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/portal.py [--quick]

Runs in a throwaway database (test_<name>), created and dropped here. Ends with one
line: RESULT {json}.

The data behind the pages:

- the buyer: 100,000 usage events (``--quick``: 10,000) through the real path
  (ingestion, rating, accrual; ``bench/close.py``'s ``real_sample``: its fine-tune
  jobs, deployments and three 8-GPU leases), spread from the start of the previous
  month until now, so both the closed month and this month have usage;
- 1,000 invoices (``--quick``: 100): 999 more buyers with the previous month's usage
  written in bulk (``bench/close.py``'s ``bulk_orgs`` and ``bulk_month``), then the
  month closed by ``period_close`` (invoices finalized and numbered, statements);
- the provider: ``providers.demo``'s sites, nodes and offers, plus the leases the
  buyer's usage ran on;
- finance: an operator org's finance member.

Every page of ``portal.urls`` is found from the URL patterns, not listed by hand: a
page that takes an id is given the id of the matching row above; a page that only
takes POST (an action) is left out; each page is fetched as the first of buyer,
provider and finance who gets a 200. Server time is Django's own time for the
request (the test client, in process: middleware, views, queries and templates).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import close
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import setup_test_environment
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

PASSWORD = "bench-portal-password-1"
GOAL_P95_MS = 150.0


def person(email: str, organization, role: str = "admin"):
    from django.contrib.auth import get_user_model

    from core import services

    user = get_user_model().objects.create_user(username=email, email=email, password=PASSWORD)
    services.membership_create(user=user, organization=organization, role=role)
    return user


def make_month(*, events: int, invoices: int) -> dict:
    """The data described at the top; returns the people and the ids pages take."""
    from core import services
    from core.models import Organization
    from invoicing.models import Invoice
    from invoicing.month_close import period_close
    from invoicing.periods import month_bounds
    from marketplace.models import Lease, Order
    from marketplace.workloads.models import Deployment, FineTuneJob
    from providers import demo as supply
    from providers.models import Node, Offer

    now = timezone.now()
    period = close.previous_month(now)
    start, end = month_bounds(period)
    providers = close.make_providers(3)
    close.log(f"buyer: {events} usage events through ingestion and rating")
    (buyer_id,) = close.real_sample([events], providers, start + timedelta(minutes=1), now)
    others = invoices - 1
    close.log(f"{others} more buyers with last month's usage, in bulk")
    bulk_ids = close.bulk_orgs(1, [40] * others, now)
    index_of = {org: 1 + n for n, org in enumerate(bulk_ids)}
    close.bulk_month(bulk_ids, [40] * others, providers, index_of, start, end, period, 1)
    close.log("closing last month")
    result = period_close(period=period, finalize=True, now=now)
    close.log(f"closed: {result.finalized} invoices, {result.statements} statements")
    buyer = Organization.objects.get(pk=buyer_id)
    provider = Organization.objects.get(pk=providers[0])
    supply.load(provider=provider)
    operator = services.org_create(name="Operator", kind="both", is_operator=True)
    people = {
        "buyer": person("buyer@bench.example", buyer),
        "provider": person("provider@bench.example", provider),
        "finance": person("finance@bench.example", operator, role="finance"),
    }
    invoice = Invoice.objects.filter(organization=buyer).order_by("pk").first()
    lease = Lease.objects.filter(provider=provider).order_by("pk").first()
    ids = {
        "invoice_id": invoice.pk if invoice else None,
        "job_id": FineTuneJob.objects.filter(organization=buyer)
        .values_list("public_id", flat=True)
        .first(),
        "deployment_id": Deployment.objects.filter(organization=buyer)
        .values_list("public_id", flat=True)
        .first(),
        "order_id": (Order.objects.filter(organization=buyer).values_list("pk", flat=True).first()),
        "lease_id": lease.pk if lease else None,
        "node_id": Node.objects.filter(organization=provider).values_list("pk", flat=True).first(),
        "offer_id": Offer.objects.filter(organization=provider)
        .values_list("pk", flat=True)
        .first(),
        "period": f"{period:%Y-%m}",
    }
    return {"people": people, "ids": ids, "buyer": buyer, "provider": provider}


def pages(ids: dict) -> list[tuple[str, str]]:
    """(name, path) for every GET page of the portal that its ids can fill."""
    found: list[tuple[str, str]] = []

    def walk(patterns, namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, inner)
            elif isinstance(pattern, URLPattern) and pattern.name:
                wanted = list(pattern.pattern.converters)
                if any(ids.get(arg) is None for arg in wanted):
                    continue
                name = f"{namespace}{pattern.name}"
                try:
                    path = reverse(name, kwargs={arg: ids[arg] for arg in wanted})
                except NoReverseMatch:  # a pattern this set of ids cannot fill
                    continue
                found.append((name, path))

    portal = next(
        p
        for p in get_resolver().url_patterns
        if isinstance(p, URLResolver) and getattr(p.urlconf_module, "__name__", "") == "portal.urls"
    )
    walk(portal.url_patterns, f"{portal.namespace}:" if portal.namespace else "")
    return found


SKIP = ("sign-out", "password-reset", "reset", "sign_out", "logout")


def measure(people: dict, found: list[tuple[str, str]], rounds: int) -> list[dict]:
    from django.template.loader import render_to_string
    from django.test import RequestFactory

    from portal.access import current_membership

    clients = {}
    for role, user in people.items():
        client = Client()
        client.force_login(user)
        clients[role] = client
    rows = []
    for name, path in found:
        if any(word in name for word in SKIP):
            continue
        who, response = None, None
        for role, client in clients.items():
            response = client.get(path)
            if response.status_code == 200:
                who = role
                break
        if who is None or not response.templates:
            continue  # an action (POST only), a redirect, or a download without a template
        template = response.templates[0].name
        client = clients[who]
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        # The bare render: the page's own template over the context the view built
        # (already evaluated: no queries), for the same person's request.
        context = response.context
        data = (context[0] if isinstance(context, list) else context).flatten()
        request = RequestFactory().get(path)
        request.user = people[who]
        request.session = client.session
        request.membership = current_membership(request)
        bare = []
        for _ in range(rounds):
            began = time.perf_counter()
            render_to_string(template, data, request=request)
            bare.append((time.perf_counter() - began) * 1000)
        rows.append(
            {
                "page": name,
                "path": path,
                "as": who,
                "p95_ms": round(percentile(times, 95), 1),
                "median_ms": round(statistics.median(times), 1),
                "bare_p95_ms": round(percentile(bare, 95), 1),
                "queries": query_count(client, path),
            }
        )
        close.log(f"{name:40} {rows[-1]['p95_ms']:7.1f} ms p95 (bare {rows[-1]['bare_p95_ms']})")
    return rows


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def query_count(client: Client, path: str) -> int:
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        client.get(path)
    return len(queries)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10,000 events, 100 invoices")
    parser.add_argument("--rounds", type=int, help="timed requests per page (default 30)")
    parser.add_argument("--keep", action="store_true", help="leave the database in place")
    parser.add_argument("--only", metavar="TEXT", help="only the pages whose path contains TEXT")
    args = parser.parse_args()
    events = 10_000 if args.quick else 100_000
    invoices = 100 if args.quick else 1_000
    rounds = args.rounds or (10 if args.quick else 30)
    if connection.vendor != "postgresql":
        sys.exit("bench/portal.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    # Each page is tried as buyer, provider and finance in turn: the 404s are expected.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    setup_test_environment()
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    cache.clear()  # nothing cached for an earlier run's database
    try:
        set_up = time.perf_counter()
        month = make_month(events=events, invoices=invoices)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        set_up = time.perf_counter() - set_up
        close.log(f"set-up {set_up:.0f} s")
        found = [(name, path) for name, path in pages(month["ids"]) if (args.only or "") in path]
        rows = measure(month["people"], found, rounds)
    finally:
        if not args.keep:
            connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)
    worst = max(rows, key=lambda r: r["p95_ms"])
    ratios = [r["p95_ms"] / r["bare_p95_ms"] for r in rows if r["bare_p95_ms"] > 0]
    for row in sorted(rows, key=lambda r: -r["p95_ms"]):
        print(
            f"  {row['p95_ms']:7.1f} ms p95  {row['median_ms']:7.1f} median  "
            f"{row['bare_p95_ms']:6.1f} bare  {row['queries']:3d} queries  {row['as']:8} "
            f"{row['path']}"
        )
    print(
        "RESULT "
        + json.dumps(
            {
                "pages": len(rows),
                "worst_page": worst["path"],
                "worst_p95_ms": worst["p95_ms"],
                "median_page_p95_ms": round(statistics.median(r["p95_ms"] for r in rows), 1),
                "goal_p95_ms": GOAL_P95_MS,
                "pages_over_goal": [r["path"] for r in rows if r["p95_ms"] > GOAL_P95_MS],
                "worst_ratio_to_bare": round(max(ratios), 1),
                "events": events,
                "invoices": invoices,
                "rounds": rounds,
                "set_up_s": round(set_up),
                "cpus": os.cpu_count(),
                "load_average": [round(x, 2) for x in os.getloadavg()[:2]],
                "ratio": round(worst["p95_ms"] / GOAL_P95_MS, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
