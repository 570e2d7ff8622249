"""Exactly once under concurrency: the same 10,000 events sent three times, shuffled,
across concurrent requests (threads, each on its own connection, real commits)."""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connections
from django.db.models import Sum

from core.followers import followers_run_until_idle
from ledger import services
from ledger.models import Account, Balance
from metering.models import UsageEvent
from pricing.rating import rate_usage, usage_rating
from tests.subjects import job_of, lease_unheld

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = 10_000
THREADS = 6
BATCH = 1000


def make_events(buyers, provider) -> list[dict]:
    rng = random.Random(10)
    start = datetime.now(UTC) - timedelta(hours=1)
    # usage of real subjects: a lease from the provider (8 GPUs for a year: room
    # for the GPU-seconds sent) and jobs, per buyer
    leases = {
        b.pk: lease_unheld(
            b, provider, price=2_345_678, gpus=8, started_at=start - timedelta(days=365)
        ).usage_subject
        for b in buyers
    }
    jobs = {b.pk: [job_of(b).public_id for _ in range(3)] for b in buyers}
    events = []
    for n in range(EVENTS):
        buyer = buyers[n % len(buyers)]
        event = {
            "id": f"e{n}",
            "source": f"runtime/{n % 7}",
            "subject": {"org": buyer.pk, "job": jobs[buyer.pk][n % 3]},
            "time": (start + timedelta(milliseconds=n)).isoformat(),
            "quantity": rng.randint(1, 50_000),
        }
        if n % 10 == 0:
            event.update(
                type="gpu.seconds",
                subject={"org": buyer.pk, "lease": leases[buyer.pk]},
                dimensions={
                    "gpu_model": "h100-sxm-80gb",
                    "provider": provider.pk,
                    "lease_price_micros_per_hour": 2_345_678,
                },
            )
        else:
            event.update(
                type="tokens.training",
                dimensions={
                    "model": rng.choice(["llama-3.1-8b", "qwen-72b"]),
                    "training_type": "lora-sft",
                },
            )
        events.append(event)
    return events


def test_the_same_events_sent_three_times_concurrently_are_counted_once(cast):
    # given 10,000 events for two buyers, each sent three times, shuffled
    buyers = [cast.buyer_a, cast.buyer_b]
    for buyer in buyers:
        services.credits_grant(
            organization=buyer,
            amount_micros=10**12,
            currency="USD",
            reason="float",
            transfer_id=f"float-{buyer.pk}",
        )
    events = make_events(buyers, cast.provider_a)
    sends = events * 3
    random.Random(3).shuffle(sends)
    batches = [sends[i : i + BATCH] for i in range(0, len(sends), BATCH)]
    keys = [cast.client(cast.operator).raw_key for _ in range(THREADS)]
    answers: list[dict] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def sender(index: int) -> None:
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {keys[index]}")
        try:
            barrier.wait()
            for batch in batches[index::THREADS]:
                response = client.post(
                    "/api/v1/usage/batch",
                    data=json.dumps({"events": batch}),
                    content_type="application/json",
                )
                assert response.status_code == 200, response.content
                answers.append(response.json())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    # when six clients send them at once
    threads = [threading.Thread(target=sender, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then each event was accepted exactly once and stored exactly once
    assert errors == []
    assert sum(a["accepted"] for a in answers) == EVENTS
    assert sum(a["duplicate"] for a in answers) == 2 * EVENTS
    assert sum(a["rejected"] for a in answers) == 0
    assert UsageEvent.objects.count() == EVENTS
    assert UsageEvent.objects.aggregate(total=Sum("quantity"))["total"] == sum(
        e["quantity"] for e in events
    )
    accepted_ids = [r["id"] for a in answers for r in a["results"] if r["status"] == "accepted"]
    assert sorted(accepted_ids) == sorted(e["id"] for e in events)

    # and rating posts exactly the rated amount of every event, once
    followers_run_until_idle([usage_rating])
    for buyer in buyers:
        expected = sum(
            rate_usage(
                usage_type=e["type"],
                quantity=e["quantity"],
                dimensions=e["dimensions"],
                at=datetime.now(UTC),
            ).amount_micros
            for e in events
            if e["subject"]["org"] == buyer.pk
        )
        credit = services.account_open(organization=buyer, kind=Account.Kind.CREDIT, currency="USD")
        assert Balance.objects.get(account=credit).debits_posted == expected
    totals = Balance.objects.aggregate(d=Sum("debits_posted"), c=Sum("credits_posted"))
    assert totals["d"] == totals["c"]
