"""A provider may not bill a lease more GPU-seconds than its GPUs ran: what is stored
for a lease stays within gpu_count x its live seconds up to the latest usage time (or
its end); an event past that is refused, naming the quantity and the bound, and two
concurrent batches for one lease cannot pass it together. Real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from django.db import connection
from django.db.models import Sum

from core.models import Event
from metering.models import UsageEvent
from metering.schema import batch_decode
from metering.services import Sender, usage_ingest
from tests.subjects import lease_unheld

pytestmark = pytest.mark.django_db
_ids = count(1)


def gpu(lease: str, buyer, quantity: int, at: datetime, *, id: str | None = None) -> dict:
    return {
        "id": id or f"bound-{next(_ids)}",
        "source": "agent/node-1",
        "type": "gpu.seconds",
        "subject": {"org": buyer.pk, "lease": lease},
        "time": at.isoformat(),
        "quantity": quantity,
        "dimensions": {},
    }


def send(client, events: list[dict]) -> list[tuple[str, str | None]]:
    response = client.post("/api/v1/usage/batch", {"events": events}, format="json")
    assert response.status_code == 200, response.content
    return [(r["status"], r.get("code")) for r in response.json()["results"]]


def stored(lease) -> int:
    rows = UsageEvent.objects.filter(subject_kind="lease", subject_id=lease.usage_subject)
    return rows.aggregate(s=Sum("quantity"))["s"] or 0


def test_gpu_seconds_past_gpus_times_live_seconds_are_refused_naming_the_bound(cast):
    # given a 2-GPU lease that started an hour ago
    now = datetime.now(UTC)
    started = now - timedelta(hours=1)
    lease = lease_unheld(cast.buyer_a, cast.provider_a, gpus=2, started_at=started)
    subject, client = lease.usage_subject, cast.client(cast.provider_a)
    half = now - timedelta(minutes=30)  # 2 x 1,800 s = 3,600 GPU-seconds by then
    first = gpu(subject, cast.buyer_a, 3000, half)
    # when a batch reports 3,000 + 1,000 GPU-seconds by half past, then 500 by 20 past
    answer = client.post(
        "/api/v1/usage/batch",
        {
            "events": [
                first,
                gpu(subject, cast.buyer_a, 1000, half),
                gpu(subject, cast.buyer_a, 500, now - timedelta(minutes=40)),
            ]
        },
        format="json",
    ).json()
    # then the event that outruns the GPUs is refused, the others stored
    assert [(r["status"], r.get("code")) for r in answer["results"]] == [
        ("accepted", None),
        ("rejected", "exceeds_lease"),
        ("accepted", None),
    ]
    assert answer["results"][1]["reason"] == (
        f"quantity 1000 would bring lease {subject}'s gpu.seconds to 4000, over its bound "
        f"of 3600 (2 GPUs x 1800 live seconds from {started.isoformat()} to "
        f"{half.isoformat()})"
    )
    assert stored(lease) == 3500
    # and later: what the hour allows (7,200) is taken, not more; a resent event is
    # a duplicate, not counted again
    assert send(
        client,
        [
            first,
            gpu(subject, cast.buyer_a, 3700, now),
            gpu(subject, cast.buyer_a, 1, now),
        ],
    ) == [("duplicate", None), ("accepted", None), ("rejected", "exceeds_lease")]
    assert stored(lease) == 7200
    # every stored row is named by a UsageRecorded event; no refused row was written
    recorded = sum(e.payload["count"] for e in Event.objects.filter(type="UsageRecorded"))
    assert recorded == UsageEvent.objects.count() == 3


def test_an_ended_lease_is_bounded_by_its_end(cast):
    now = datetime.now(UTC)
    started, ended = now - timedelta(hours=3), now - timedelta(hours=2)
    lease = lease_unheld(cast.buyer_a, cast.provider_a, gpus=1, started_at=started, ended_at=ended)
    client = cast.client(cast.provider_a)
    # an hour of one GPU, reported at its end, is all it may bill
    assert send(
        client,
        [
            gpu(lease.usage_subject, cast.buyer_a, 3600, ended),
            gpu(lease.usage_subject, cast.buyer_a, 1, ended),
        ],
    ) == [("accepted", None), ("rejected", "exceeds_lease")]
    assert stored(lease) == 3600


def test_one_batch_over_one_lease_keeps_another_leases_events_and_token_usage(cast):
    from tests.subjects import job_of

    now = datetime.now(UTC)
    small = lease_unheld(cast.buyer_a, cast.provider_a, started_at=now - timedelta(seconds=100))
    large = lease_unheld(cast.buyer_a, cast.provider_a, gpus=8, started_at=now - timedelta(days=1))
    job = job_of(cast.buyer_a)
    events = [
        gpu(small.usage_subject, cast.buyer_a, 101, now),
        gpu(large.usage_subject, cast.buyer_a, 86_400, now),
        {
            "id": "tokens-1",
            "source": "runtime/node-1",
            "type": "tokens.training",
            "subject": {"org": cast.buyer_a.pk, "job": job.public_id},
            "time": now.isoformat(),
            "quantity": 1000,
            "dimensions": {"model": "llama-3.1-8b", "training_type": "lora-sft"},
        },
    ]
    # the platform's own producer is bounded the same way
    outcomes = usage_ingest(sender=Sender.platform(), events=batch_decode(_body(events)))
    assert [(o.status, o.code) for o in outcomes] == [
        ("rejected", "exceeds_lease"),
        ("accepted", ""),
        ("accepted", ""),
    ]
    assert (stored(small), stored(large)) == (0, 86_400)


def _body(events: list[dict]) -> bytes:
    import json

    return json.dumps({"events": events}).encode()


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_for_the_same_leases_never_pass_their_bound_together(cast):
    # given two 1-GPU leases live for 1,000 s, and eight batches sent at once, each
    # reporting 300 GPU-seconds of both leases (in either order)
    now = datetime.now(UTC)
    leases = [
        lease_unheld(cast.buyer_a, cast.provider_a, started_at=now - timedelta(seconds=1000))
        for _ in range(2)
    ]
    batches = []
    for n in range(8):
        pair = [
            gpu(lease.usage_subject, cast.buyer_a, 300, now, id=f"c{n}-{i}")
            for i, lease in enumerate(leases)
        ]
        batches.append(_body(pair if n % 2 else pair[::-1]))
    sender = Sender(producer_org_id=cast.provider_a.pk, provider_org_id=cast.provider_a.pk)
    barrier = threading.Barrier(len(batches))
    results: list[list[tuple[str, str]]] = []
    errors: list[BaseException] = []

    def ingest(body: bytes) -> None:
        try:
            barrier.wait()
            outcomes = usage_ingest(sender=sender, events=batch_decode(body))
            results.append([(o.status, o.code) for o in outcomes])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    # when they are ingested concurrently, each in its own transaction
    threads = [threading.Thread(target=ingest, args=(body,)) for body in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then no deadlock or error, and each lease got three of the eight (900 <= 1,000)
    assert not errors, errors
    flat = [outcome for result in results for outcome in result]
    assert flat.count(("accepted", "")) == 6
    assert flat.count(("rejected", "exceeds_lease")) == 10
    assert [stored(lease) for lease in leases] == [900, 900]
    recorded = sum(e.payload["count"] for e in Event.objects.filter(type="UsageRecorded"))
    assert recorded == UsageEvent.objects.count() == 6
