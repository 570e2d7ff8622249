"""POST /api/v1/usage/batch: per-event answers, tenancy, limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from metering.models import UsageEvent
from metering.schema import MAX_EVENT_BYTES
from tests.subjects import lease_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/usage/batch"


def send(client, events):
    return client.post(URL, data=json.dumps({"events": events}), content_type="application/json")


def test_a_mixed_batch_is_answered_event_by_event_and_only_good_events_are_stored(
    cast, usage_event
):
    # given an operator key (a trusted integration) and an event it sent before
    client = cast.client(cast.operator)
    earlier = usage_event(cast.buyer_a, id="seen-before")
    assert send(client, [earlier]).json()["accepted"] == 1
    valid = usage_event(cast.buyer_a, quantity=7)
    future = usage_event(cast.buyer_a, time=(datetime.now(UTC) + timedelta(minutes=6)).isoformat())
    almost_future = usage_event(
        cast.buyer_a, time=(datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    )
    no_quantity = usage_event(cast.buyer_a)
    del no_quantity["quantity"]
    string_quantity = usage_event(cast.buyer_a, quantity="12")
    naive_time = usage_event(cast.buyer_a, time="2026-11-01T00:00:00")
    wrong_subject = usage_event(cast.buyer_a, subject={"org": cast.buyer_a.pk, "lease": "l-1"})
    no_model = usage_event(cast.buyer_a, dimensions={"training_type": "lora-sft"})
    oversized = usage_event(
        cast.buyer_a,
        dimensions={
            "model": "m",
            "training_type": "lora-sft",
            "blob": "x" * 190,
            **{f"k{n}": "y" * 150 for n in range(13)},
        },
    )
    unknown_type = usage_event(cast.buyer_a, type="tokens.magic")
    not_an_object = "hello"
    provider_as_subject = usage_event(cast.provider_a)
    batch = [
        valid,
        dict(valid),
        earlier,
        future,
        almost_future,
        no_quantity,
        string_quantity,
        naive_time,
        wrong_subject,
        no_model,
        oversized,
        unknown_type,
        not_an_object,
        provider_as_subject,
    ]
    # when the batch is sent
    response = send(client, batch)
    # then each event has its own answer, in order
    assert response.status_code == 200
    body = response.json()
    answers = [(r["status"], r.get("code")) for r in body["results"]]
    assert answers == [
        ("accepted", None),
        ("duplicate", None),
        ("duplicate", None),
        ("rejected", "future"),
        ("accepted", None),
        ("rejected", "invalid"),
        ("rejected", "invalid"),
        ("rejected", "invalid"),
        ("rejected", "invalid"),
        ("rejected", "invalid"),
        ("rejected", "oversized"),
        ("rejected", "invalid"),
        ("rejected", "invalid"),
        ("rejected", "unknown_subject"),
    ]
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 2, 10)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(batch)))
    assert results[3]["id"] == future["id"]
    assert "quantity" in results[5]["reason"]
    assert "$.quantity" in results[6]["reason"] or "quantity" in results[6]["reason"]
    assert "time zone" in results[7]["reason"] or "timezone" in results[7]["reason"]
    assert "dimensions.model is required" in results[9]["reason"]
    assert str(MAX_EVENT_BYTES) in results[10]["reason"]
    # and the good ones, and only they, are stored
    stored = set(UsageEvent.objects.values_list("event_id", "quantity"))
    assert stored == {("seen-before", 1000), (valid["id"], 7), (almost_future["id"], 1000)}


@pytest.mark.parametrize("problem", ["none", "unknown_org", "repeated", "sent_before"])
def test_a_well_formed_batch_is_answered_in_order_whatever_one_event_gets_wrong(
    cast, usage_event, problem
):
    # given an operator key and a batch where every event decodes, so the batch is
    # first judged whole, with at most one event that is not new or not a buyer's
    client = cast.client(cast.operator)
    batch = [usage_event(cast.buyer_a if n % 2 else cast.buyer_b, quantity=n) for n in range(20)]
    if problem == "sent_before":
        assert send(client, [batch[7]]).json()["accepted"] == 1
    if problem == "unknown_org":
        batch[7] = usage_event(cast.provider_a, quantity=7)
    if problem == "repeated":
        batch[7] = dict(batch[3])
    # when it is sent
    body = send(client, batch).json()
    # then every event has its answer at its own index, and only the others are stored
    expected = {
        "none": ("accepted", None),
        "unknown_org": ("rejected", "unknown_subject"),
        "repeated": ("duplicate", None),
        "sent_before": ("duplicate", None),
    }[problem]
    answers = [(r["index"], r["id"], r["status"], r.get("code")) for r in body["results"]]
    assert answers == [
        (n, e["id"], *(expected if n == 7 else ("accepted", None))) for n, e in enumerate(batch)
    ]
    assert body["accepted"] == (20 if problem == "none" else 19)
    stored = dict(UsageEvent.objects.values_list("event_id", "quantity"))
    assert {e["id"]: e["quantity"] for n, e in enumerate(batch) if n != 7}.items() <= stored.items()
    assert (batch[7]["id"] in stored) == (problem in ("none", "sent_before", "repeated"))


def test_a_buyer_key_sends_no_usage_of_its_own_or_another_buyer(cast, usage_event):
    # a buyer's usage is what the platform and its providers measured, not what it says
    client = cast.client(cast.buyer_a)
    lease = lease_for(cast.buyer_a, cast.provider_a)
    own = usage_event(cast.buyer_a)
    theirs = usage_event(cast.buyer_b)
    gpu = usage_event(
        cast.buyer_a,
        type="gpu.seconds",
        subject={"org": cast.buyer_a.pk, "lease": lease.usage_subject},
        dimensions={},
    )
    body = send(client, [own, theirs, gpu]).json()
    assert [(r["status"], r.get("code")) for r in body["results"]] == [
        ("rejected", "forbidden"),
        ("rejected", "forbidden"),
        ("rejected", "forbidden"),
    ]
    reasons = [r["reason"] for r in body["results"]]
    assert reasons[0] == (
        "tokens.training of a job or deployment is counted by the platform that ran it, "
        "not sent with a buyer key"
    )
    assert reasons[1] == "a buyer key may only send usage of its own organization"
    assert reasons[2] == "gpu.seconds are reported by the provider serving the lease"
    assert not UsageEvent.objects.exists()


def test_a_provider_reports_only_its_own_gpu_seconds(cast, usage_event):
    client = cast.client(cast.provider_a)
    lease = lease_for(cast.buyer_a, cast.provider_a)

    def gpu(provider):
        return usage_event(
            cast.buyer_a,
            type="gpu.seconds",
            quantity=3600,
            subject={"org": cast.buyer_a.pk, "lease": lease.usage_subject},
            dimensions={
                "gpu_model": lease.gpu_model,
                "provider": provider.pk,
                "lease_price_micros_per_hour": 2_000_000,
            },
        )

    body = send(client, [gpu(cast.provider_a), gpu(cast.provider_b)]).json()
    assert [(r["status"], r.get("code")) for r in body["results"]] == [
        ("accepted", None),
        ("rejected", "invalid"),
    ]
    assert body["results"][1]["reason"] == (
        f"dimensions.provider {cast.provider_b.pk} does not match lease "
        f"{lease.usage_subject}'s {cast.provider_a.pk}"
    )
    assert list(UsageEvent.objects.values_list("dimensions__provider", flat=True)) == [
        cast.provider_a.pk
    ]


def test_two_tenants_ids_never_collide(cast, usage_event):
    def gpu(provider):
        lease = lease_for(cast.buyer_a, provider)
        return usage_event(
            cast.buyer_a,
            id="evt-1",
            source="agent",
            type="gpu.seconds",
            subject={"org": cast.buyer_a.pk, "lease": lease.usage_subject},
            dimensions={},
        )

    assert send(cast.client(cast.provider_a), [gpu(cast.provider_a)]).json()["accepted"] == 1
    assert send(cast.client(cast.provider_b), [gpu(cast.provider_b)]).json()["accepted"] == 1
    assert UsageEvent.objects.count() == 2


def test_whole_batch_problems_are_one_error(cast, usage_event):
    client = cast.client(cast.operator)
    too_many = [usage_event(cast.buyer_a) for _ in range(1001)]
    response = send(client, too_many)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "1000" in response.json()["error"]["message"]
    response = client.post(URL, data=b"{not json", content_type="application/json")
    assert response.status_code == 400
    response = client.post(URL, data=b'{"events": [], "x": 1}', content_type="application/json")
    assert response.status_code == 400
    big = usage_event(cast.buyer_a, dimensions={f"d{n}": "x" * 200 for n in range(6)})
    body = json.dumps({"events": [big] * 1000})
    assert 1024 * 1024 < len(body) < 2 * 1024 * 1024  # ours, not Django's, body limit
    response = client.post(URL, data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert UsageEvent.objects.count() == 0


def test_anonymous_and_finance_keys_may_not_send(cast, usage_event):
    response = send(cast.anonymous, [usage_event(cast.buyer_a)])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    response = send(cast.client(cast.buyer_a, role="finance"), [usage_event(cast.buyer_a)])
    assert response.status_code == 403
    for path in ("events/", "meter", "delivered"):
        assert cast.anonymous.get(f"/api/v1/usage/{path}").status_code == 401
