"""kill -9, 50 times, of the rating follower and of an ingest worker while events flow:
afterwards every event is stored once, every batch is rated exactly once, and the
ledger sums to zero. Real processes (``manage.py run_follower``, ``manage.py
usage_import``) against the test database."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from django.db import connection
from django.db.models import Sum

from core.followers import follower_position, followers_run_until_idle
from core.models import Event
from ledger import services
from ledger.models import Account, Balance
from metering.events import USAGE_STREAM
from metering.models import UsageEvent
from metering.selectors import usage_for_rating
from pricing.rating import groups_for, rate_usage, usage_rating, usage_transfer_id
from tests.subjects import deployment_of, lease_unheld

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 12_000
KILLS = 50


def database_url() -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s["HOST"] or "127.0.0.1"
    return f"postgres://{s['USER']}{password}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


def write_events(path: Path, buyers, provider) -> list[dict]:
    rng = random.Random(50)
    start = datetime.now(UTC) - timedelta(minutes=30)
    # usage of real subjects: a lease from the provider (8 GPUs for a year: room
    # for the GPU-seconds sent) and a deployment, per buyer
    leases = {
        b.pk: lease_unheld(
            b, provider, price=1_234_567, gpus=8, started_at=start - timedelta(days=365)
        ).usage_subject
        for b in buyers
    }
    deployments = {b.pk: deployment_of(b).public_id for b in buyers}
    events = []
    for n in range(EVENTS):
        buyer = buyers[n % len(buyers)]
        event = {
            "id": f"k{n}",
            "source": "spool",
            "time": start + timedelta(milliseconds=n),
            "quantity": rng.randint(1, 400_000),
        }
        if n % 5 == 0:
            event.update(
                type="gpu.seconds",
                subject={"org": buyer.pk, "lease": leases[buyer.pk]},
                dimensions={
                    "gpu_model": "h100-sxm-80gb",
                    "provider": provider.pk,
                    "lease_price_micros_per_hour": 1_234_567,
                },
            )
        else:
            event.update(
                type="tokens.prompt",
                subject={"org": buyer.pk, "deployment": deployments[buyer.pk]},
                dimensions={"model": "llama-3.1-8b"},
            )
        events.append(event)
    path.write_bytes(b"\n".join(msgspec.json.encode(e) for e in events))
    return events


def test_kill_9_of_follower_and_ingest_50_times_loses_and_doubles_nothing(cast, tmp_path):
    # given two well-funded buyers and one whose credit runs out on the way
    rich, poor = cast.buyer_a, cast.buyer_b
    services.credits_grant(
        organization=rich,
        amount_micros=10**12,
        currency="USD",
        reason="float",
        transfer_id="float-rich",
    )
    services.credits_grant(
        organization=poor,
        amount_micros=5_000_000,
        currency="USD",
        reason="float",
        transfer_id="float-poor",
    )
    events = write_events(tmp_path / "events.jsonl", [rich, poor], cast.provider_a)
    env = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "WARNING"}
    commands = {
        "ingest": [
            sys.executable,
            "manage.py",
            "usage_import",
            str(tmp_path / "events.jsonl"),
            "--batch-size",
            "100",
            "--pause",
            "0.03",
            "--checkpoint",
            str(tmp_path / "checkpoint"),
        ],
        "follower": [
            sys.executable,
            "manage.py",
            "run_follower",
            usage_rating.name,
            "--interval",
            "0.02",
            "--batch-size",
            "3",
        ],
    }

    logs = {name: (tmp_path / f"{name}.log").open("ab") for name in commands}

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            commands[name], cwd=ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT
        )

    running = {name: start(name) for name in commands}
    rng = random.Random(9)
    kills = 0
    kills_of = {name: 0 for name in commands}
    # when both are killed with SIGKILL at random points, 50 times, and restarted
    try:
        while kills < KILLS:
            time.sleep(rng.uniform(0.2, 0.7))
            if running["follower"].poll() is not None:
                break  # it died on its own: the log says why
            # in turns while the ingest has events left, then the follower alone
            victim = (
                "ingest" if kills % 2 == 0 and running["ingest"].poll() is None else ("follower")
            )
            running[victim].send_signal(signal.SIGKILL)
            running[victim].wait()
            kills += 1
            kills_of[victim] += 1
            running[victim] = start(victim)
        # then let the ingest finish and the follower drain
        assert running["ingest"].wait(timeout=60) == 0
    finally:
        for process in running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
    for log in logs.values():
        log.close()
    follower_log = (tmp_path / "follower.log").read_text()
    assert "Traceback" not in follower_log, follower_log[-3000:]
    assert kills == KILLS
    print(f"kills: {kills_of}")
    # both were killed often, the ingest while it still had events to send
    assert min(kills_of.values()) >= 5, kills_of
    followers_run_until_idle([usage_rating])

    # every event stored once
    assert UsageEvent.objects.count() == EVENTS
    assert UsageEvent.objects.aggregate(q=Sum("quantity"))["q"] == sum(
        e["quantity"] for e in events
    )
    # every batch rated, exactly once: one entry per rated group, no other usage entry
    batches = Event.objects.filter(stream_type=USAGE_STREAM).order_by("position")
    assert follower_position(usage_rating.name) == batches.last().position
    expected_ids = set()
    for batch in batches:
        lines = usage_for_rating(ranges=batch.payload["usage_ranges"])
        assert len(lines) == batch.payload["count"]
        expected_ids |= {
            usage_transfer_id(g.first_usage_id) for g in groups_for(lines) if g.amount > 0
        }
    posted_ids = set(
        Event.objects.filter(stream_type="ledger.entry", payload__kind="usage").values_list(
            "payload__transfer_id", flat=True
        )
    )
    assert posted_ids == expected_ids
    # each buyer paid exactly the sum of its events' rated amounts, across credit and
    # receivable; credit never went below zero
    for buyer in (rich, poor):
        expected = sum(
            rate_usage(
                usage_type=e["type"],
                quantity=e["quantity"],
                dimensions=e["dimensions"],
                at=e["time"],
            ).amount_micros
            for e in events
            if e["subject"]["org"] == buyer.pk
        )
        paid = 0
        for kind in (Account.Kind.CREDIT, Account.Kind.RECEIVABLE):
            account = services.account_open(organization=buyer, kind=kind, currency="USD")
            paid += Balance.objects.get(account=account).debits_posted
        assert paid == expected
    poor_credit = Balance.objects.get(
        account=services.account_open(organization=poor, kind=Account.Kind.CREDIT, currency="USD")
    )
    assert poor_credit.credits_posted - poor_credit.debits_posted == 0
    assert Event.objects.filter(type="CreditExhausted", tenant_id=poor.pk).count() == 1
    # the ledger sums to zero, entry by entry and in total
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM (SELECT entry_position FROM billing_posting GROUP BY "
            "entry_position HAVING sum(CASE side WHEN 'D' THEN amount_micros "
            "ELSE -amount_micros END) <> 0) unbalanced"
        )
        assert cursor.fetchone()[0] == 0
    totals = Balance.objects.aggregate(d=Sum("debits_posted"), c=Sum("credits_posted"))
    assert totals["d"] == totals["c"]
