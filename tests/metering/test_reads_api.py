"""GET /api/v1/usage/…: each tenant reads only its own usage; providers see what they
delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metering.schema import UsageEventIn
from metering.services import usage_record
from tests.subjects import job_for, job_of, lease_for

pytestmark = pytest.mark.django_db


def record(org, **fields):
    base = {
        "id": f"r-{org.pk}-{fields.get('quantity', 1)}-{fields.get('type', 't')}",
        "source": "runtime",
        "type": "tokens.training",
        "subject": {"org": org.pk, "job": job_for(org).public_id},
        "time": datetime.now(UTC) - timedelta(hours=1),
        "quantity": 1,
        "dimensions": {"model": "llama-3.1-8b", "training_type": "lora-sft"},
    }
    base.update(fields)
    import msgspec

    outcome = usage_record(
        events=[msgspec.convert(base, UsageEventIn, from_attributes=False, strict=False)]
    )
    assert outcome[0].status == "accepted", outcome


def test_a_buyer_reads_its_own_usage_and_never_another_buyers(cast):
    first, second = job_for(cast.buyer_a).public_id, job_of(cast.buyer_a).public_id
    record(cast.buyer_a, quantity=100)
    record(cast.buyer_a, quantity=23, subject={"org": cast.buyer_a.pk, "job": second})
    record(cast.buyer_b, quantity=5000)
    a = cast.client(cast.buyer_a, role="member")
    events = a.get("/api/v1/usage/events/").json()["results"]
    assert sorted(e["quantity"] for e in events) == [23, 100]
    assert all(e["subject"]["org"] == cast.buyer_a.pk for e in events)
    meter = a.get("/api/v1/usage/meter?type=tokens.training&group_by=subject,model").json()
    assert {(r["group"]["subject"], r["group"]["model"], r["value"]) for r in meter["rows"]} == {
        (first, "llama-3.1-8b", 100),
        (second, "llama-3.1-8b", 23),
    }
    assert meter["truncated"] is False
    b = cast.client(cast.buyer_b)
    meter = b.get("/api/v1/usage/meter?aggregation=count").json()
    assert [r["value"] for r in meter["rows"]] == [1]
    unique = a.get("/api/v1/usage/meter?aggregation=unique_count&unique_of=subject").json()
    assert [r["value"] for r in unique["rows"]] == [2]


def test_a_provider_sees_the_gpu_seconds_it_delivered(cast):
    def gpu(buyer, provider, seconds):
        record(
            buyer,
            id=f"g-{buyer.pk}-{provider.pk}",
            type="gpu.seconds",
            quantity=seconds,
            subject={"org": buyer.pk, "lease": lease_for(buyer, provider).usage_subject},
            # gpu_model, provider and price are filled in from the lease
            dimensions={"region": "eu"},
        )

    gpu(cast.buyer_a, cast.provider_a, 60)
    gpu(cast.buyer_b, cast.provider_a, 30)
    gpu(cast.buyer_a, cast.provider_b, 999)
    body = (
        cast.client(cast.provider_a)
        .get("/api/v1/usage/delivered?window=month&group_by=gpu_model")
        .json()
    )
    assert [(r["group"]["gpu_model"], r["value"]) for r in body["rows"]] == [("h100-sxm-80gb", 90)]
    # the provider sees no buyer's raw events
    assert cast.client(cast.provider_a).get("/api/v1/usage/events/").json()["results"] == []


def test_bad_meter_parameters_are_400s(cast):
    client = cast.client(cast.buyer_a)
    for query in (
        "window=week",
        "aggregation=avg",
        "since=yesterday",
        "type=nope",
        "group_by=Model",
        "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
    ):
        response = client.get(f"/api/v1/usage/meter?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"]["details"]["parameter"]
