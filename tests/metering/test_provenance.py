"""Usage has provenance: an event is accepted only for a subject the platform made,
of the buyer it names — a lease on the sender's capacity, billed at the lease's own
price, or a job or deployment the platform runs. Real PostgreSQL, real ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from django.utils import timezone

from core.followers import followers_run_until_idle
from ledger import services as ledger
from ledger.models import Account, Balance
from marketplace.models import Lease
from metering.models import UsageEvent
from metering.schema import SubjectIn, UsageEventIn
from metering.services import Sender, usage_ingest, usage_record
from pricing.rating import usage_rating
from tests.subjects import (
    deployment_of,
    job_of,
    lease_matched,
    lease_unheld,
)

pytestmark = pytest.mark.django_db
_ids = count(1)
PRICE = 2_000_000  # $2.00 per GPU-hour


def gpu_event(buyer, lease: str, *, quantity=3600, time=None, **dimensions) -> dict:
    return {
        "id": f"gpu-{next(_ids)}",
        "source": "agent/node-1",
        "type": "gpu.seconds",
        "subject": {"org": buyer.pk, "lease": lease},
        "time": (time or datetime.now(UTC)).isoformat(),
        "quantity": quantity,
        "dimensions": dimensions,
    }


def token_event(buyer, kind: str, subject: str, *, usage_type="tokens.prompt") -> dict:
    dims = {"model": "llama-3.1-8b"}
    if usage_type == "tokens.training":
        dims["training_type"] = "lora-sft"
    return {
        "id": f"tok-{next(_ids)}",
        "source": "runtime/node-1",
        "type": usage_type,
        "subject": {"org": buyer.pk, kind: subject},
        "time": datetime.now(UTC).isoformat(),
        "quantity": 1_000_000,
        "dimensions": dims,
    }


def send(client, events: list[dict]) -> dict:
    response = client.post("/api/v1/usage/batch", {"events": events}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def balance(org, kind) -> int:
    account = ledger.account_open(organization=org, kind=kind, currency="USD")
    b = Balance.objects.get(account=account)
    if account.normal_side == "C":
        return b.credits_posted - b.debits_posted
    return b.debits_posted - b.credits_posted


def books(cast) -> tuple[int, int, int]:
    return (
        balance(cast.buyer_a, Account.Kind.CREDIT),
        balance(cast.provider_a, Account.Kind.PAYABLE),
        balance(cast.provider_b, Account.Kind.PAYABLE),
    )


def rate() -> int:
    return followers_run_until_idle([usage_rating])


@pytest.fixture
def funded(cast):
    ledger.credits_grant(
        organization=cast.buyer_a, amount_micros=100_000_000, currency="USD", reason="test"
    )
    return cast


def test_the_finding_another_provider_cannot_bill_a_buyer_it_never_served(funded):
    # given provider A serves buyer A; provider B never dealt with buyer A
    cast = funded
    lease_unheld(cast.buyer_a, cast.provider_a, price=PRICE)
    before = books(cast)
    # when provider B reports GPU time on an invented lease at a price of its choosing
    answer = send(
        cast.client(cast.provider_b),
        [
            gpu_event(
                cast.buyer_a,
                "demo:lease-1",
                quantity=3600,
                gpu_model="H100",
                provider=cast.provider_b.pk,
                lease_price_micros_per_hour=9_000_000,
            )
        ],
    )
    # then it is refused, nothing is stored and, after rating, no money moved
    assert answer["accepted"] == 0 and answer["rejected"] == 1
    [result] = answer["results"]
    assert result["code"] == "unknown_subject"
    assert "subject.lease 'demo:lease-1'" in result["reason"]
    assert f"organization {cast.buyer_a.pk}" in result["reason"]
    assert not UsageEvent.objects.exists()
    rate()
    assert books(cast) == before


def test_another_providers_existing_lease_is_refused_like_an_unknown_one(funded):
    cast = funded
    lease = lease_unheld(cast.buyer_a, cast.provider_a, price=PRICE)
    before = books(cast)
    answer = send(cast.client(cast.provider_b), [gpu_event(cast.buyer_a, lease.usage_subject)])
    [result] = answer["results"]
    assert result["status"] == "rejected"
    assert result["code"] == "unknown_subject"
    assert result["reason"] == (
        f"subject.lease '{lease.usage_subject}' is not a lease of organization "
        f"{cast.buyer_a.pk} served by organization {cast.provider_b.pk}"
    )
    rate()
    assert books(cast) == before


def test_a_lease_of_another_buyer_is_refused(funded):
    cast = funded
    lease = lease_unheld(cast.buyer_b, cast.provider_a, price=PRICE)
    answer = send(cast.client(cast.provider_a), [gpu_event(cast.buyer_a, lease.usage_subject)])
    assert answer["results"][0]["code"] == "unknown_subject"


def test_the_senders_own_lease_is_billed_at_the_leases_price_without_the_dimensions(funded):
    cast = funded
    lease = lease_unheld(cast.buyer_a, cast.provider_a, price=PRICE)
    credit, payable_a, payable_b = books(cast)
    # no gpu_model, provider or price sent: all three come from the lease
    answer = send(cast.client(cast.provider_a), [gpu_event(cast.buyer_a, lease.usage_subject)])
    assert answer["accepted"] == 1, answer
    stored = UsageEvent.objects.get()
    assert stored.dimensions == {
        "gpu_model": lease.gpu_model,
        "provider": cast.provider_a.pk,
        "lease_price_micros_per_hour": PRICE,
    }
    rate()
    # 1 GPU-hour at $2.00 to the provider, + the 10% platform fee from the buyer
    assert books(cast) == (credit - 2_200_000, payable_a + 2_000_000, payable_b)


def test_matching_dimensions_are_accepted_as_sent(funded):
    cast = funded
    lease = lease_unheld(cast.buyer_a, cast.provider_a, price=PRICE)
    answer = send(
        cast.client(cast.provider_a),
        [
            gpu_event(
                cast.buyer_a,
                lease.usage_subject,
                gpu_model=lease.gpu_model,
                provider=cast.provider_a.pk,
                lease_price_micros_per_hour=PRICE,
                region="us-east",
            )
        ],
    )
    assert answer["accepted"] == 1, answer
    assert UsageEvent.objects.get().dimensions["region"] == "us-east"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("lease_price_micros_per_hour", 9_000_000, PRICE),
        ("gpu_model", "B200", "h100-sxm-80gb"),
    ],
)
def test_a_dimension_that_disagrees_with_the_lease_is_refused_naming_it(
    funded, field, value, expected
):
    cast = funded
    lease = lease_unheld(cast.buyer_a, cast.provider_a, price=PRICE)
    before = books(cast)
    answer = send(
        cast.client(cast.provider_a),
        [gpu_event(cast.buyer_a, lease.usage_subject, **{field: value})],
    )
    [result] = answer["results"]
    assert result["status"] == "rejected" and result["code"] == "invalid"
    assert result["reason"] == (
        f"dimensions.{field} {value!r} does not match lease {lease.usage_subject}'s {expected!r}"
    )
    rate()
    assert books(cast) == before


def test_a_provider_dimension_naming_another_provider_is_refused(funded):
    cast = funded
    lease = lease_unheld(cast.buyer_a, cast.provider_a, price=PRICE)
    answer = send(
        cast.client(cast.provider_a),
        [gpu_event(cast.buyer_a, lease.usage_subject, provider=cast.provider_b.pk)],
    )
    [result] = answer["results"]
    assert result["code"] == "invalid"
    assert result["reason"].startswith(f"dimensions.provider {cast.provider_b.pk} does not match")


def test_time_outside_the_leases_live_interval_is_refused(funded):
    cast = funded
    now = timezone.now()
    ended = lease_unheld(
        cast.buyer_a,
        cast.provider_a,
        started_at=now - timedelta(hours=3),
        ended_at=now - timedelta(hours=2),
    )
    before_start = gpu_event(cast.buyer_a, ended.usage_subject, time=now - timedelta(hours=4))
    after_end = gpu_event(cast.buyer_a, ended.usage_subject, time=now - timedelta(hours=1))
    inside = gpu_event(
        cast.buyer_a,
        ended.usage_subject,
        quantity=1800,  # half an hour of its one GPU, by half an hour in
        time=now - timedelta(hours=2, minutes=30),
    )
    answer = send(cast.client(cast.provider_a), [before_start, after_end, inside])
    assert [r["status"] for r in answer["results"]] == ["rejected", "rejected", "accepted"]
    for result in answer["results"][:2]:
        assert result["code"] == "invalid"
        assert f"outside lease {ended.usage_subject}'s live interval" in result["reason"]
        assert ended.ended_at.isoformat() in result["reason"]


def test_an_agent_key_bound_to_one_node_reports_only_that_nodes_leases(funded):
    cast = funded
    here = lease_unheld(cast.buyer_a, cast.provider_a)
    there = lease_unheld(cast.buyer_a, cast.provider_a)
    sender = Sender(
        producer_org_id=cast.provider_a.pk, provider_org_id=cast.provider_a.pk, node_id=here.node_id
    )
    events = [
        UsageEventIn(
            id=f"agent-{n}",
            source="agent",
            type="gpu.seconds",
            subject=SubjectIn(org=cast.buyer_a.pk, lease=lease.usage_subject),
            time=timezone.now(),
            quantity=60,
        )
        for n, lease in enumerate((here, there))
    ]
    ok, refused = usage_ingest(sender=sender, events=events)
    assert ok.status == "accepted"
    assert (refused.status, refused.code) == ("rejected", "forbidden")
    assert refused.reason == (
        f"subject.lease '{there.usage_subject}' runs on node {there.node_id}, not on node "
        f"{here.node_id} of this agent key"
    )


@pytest.mark.parametrize("role", ["provider", "buyer"])
def test_keys_of_providers_and_buyers_may_not_send_token_usage(funded, role):
    cast = funded
    job = job_of(cast.buyer_a)
    deployment = deployment_of(cast.buyer_a)
    client = cast.client(cast.provider_a if role == "provider" else cast.buyer_a)
    answer = send(
        client,
        [
            token_event(cast.buyer_a, "job", job.public_id, usage_type="tokens.training"),
            token_event(cast.buyer_a, "deployment", deployment.public_id),
        ],
    )
    assert answer["rejected"] == 2
    for result in answer["results"]:
        assert result["code"] == "forbidden"
        assert "counted by the platform that ran it" in result["reason"]
    assert not UsageEvent.objects.exists()


def test_token_usage_of_invented_or_other_buyers_jobs_and_deployments_is_refused(funded):
    cast = funded
    theirs_job = job_of(cast.buyer_b)
    theirs_deployment = deployment_of(cast.buyer_b)
    before = books(cast)
    events = [
        token_event(cast.buyer_a, "job", "ft-invented", usage_type="tokens.training"),
        token_event(cast.buyer_a, "job", theirs_job.public_id, usage_type="tokens.training"),
        token_event(cast.buyer_a, "deployment", "dep-invented"),
        token_event(cast.buyer_a, "deployment", theirs_deployment.public_id),
    ]
    # the operator's key (trusted) and the platform's own producers alike
    answer = send(cast.client(cast.operator), events)
    assert answer["rejected"] == 4
    reasons = [r["reason"] for r in answer["results"]]
    assert [r["code"] for r in answer["results"]] == ["unknown_subject"] * 4
    assert (
        reasons[0]
        == f"subject.job 'ft-invented' is not a fine-tune job of organization {cast.buyer_a.pk}"
    )
    assert reasons[3] == (
        f"subject.deployment '{theirs_deployment.public_id}' is not a deployment serving "
        f"organization {cast.buyer_a.pk}"
    )
    internal = usage_record(
        events=[
            UsageEventIn(
                id=f"internal-{n}",
                source="runtime",
                type="tokens.prompt",
                subject=SubjectIn(org=cast.buyer_a.pk, **{kind: subject}),
                time=timezone.now(),
                quantity=10,
                dimensions={"model": "llama-3.1-8b"},
            )
            for n, (kind, subject) in enumerate(
                [("job", "ft-invented"), ("deployment", theirs_deployment.public_id)]
            )
        ]
    )
    assert [o.code for o in internal] == ["unknown_subject", "unknown_subject"]
    rate()
    assert books(cast) == before
    assert not UsageEvent.objects.exists()


def test_the_platform_records_tokens_of_the_buyers_jobs_and_of_platform_deployments(funded):
    cast = funded
    job = job_of(cast.buyer_a)
    shared = deployment_of(None)
    own = deployment_of(cast.buyer_a)
    outcomes = usage_record(
        events=[
            UsageEventIn(
                id=f"ok-{n}",
                source="runtime",
                type="tokens.prompt",
                subject=SubjectIn(org=cast.buyer_a.pk, **{kind: subject}),
                time=timezone.now(),
                quantity=10,
                dimensions={"model": "llama-3.1-8b"},
            )
            for n, (kind, subject) in enumerate(
                [
                    ("job", job.public_id),
                    ("deployment", shared.public_id),
                    ("deployment", own.public_id),
                ]
            )
        ]
    )
    assert [o.status for o in outcomes] == ["accepted"] * 3


def test_a_mixed_batch_keeps_the_good_events(funded):
    cast = funded
    lease = lease_unheld(cast.buyer_a, cast.provider_a, price=PRICE)
    job = job_of(cast.buyer_a)
    events = [
        gpu_event(cast.buyer_a, lease.usage_subject, quantity=1800),
        gpu_event(cast.buyer_a, "lease-999999999"),
        token_event(cast.buyer_a, "job", job.public_id, usage_type="tokens.training"),
        gpu_event(cast.buyer_a, lease.usage_subject, lease_price_micros_per_hour=1),
        gpu_event(cast.buyer_a, lease.usage_subject, quantity=1800),
    ]
    answer = send(cast.client(cast.provider_a), events)
    assert [r["status"] for r in answer["results"]] == [
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "accepted",
    ]
    assert [r.get("code") for r in answer["results"]] == [
        None,
        "unknown_subject",
        "forbidden",
        "invalid",
        None,
    ]
    assert UsageEvent.objects.count() == 2
    _, payable_a, _ = books(cast)
    rate()
    assert balance(cast.provider_a, Account.Kind.PAYABLE) == payable_a + 2_000_000


@pytest.mark.django_db(transaction=True)
def test_a_matched_leases_gpu_seconds_are_stored_at_its_price_and_left_to_its_hold(cast):
    # given a lease the market made (its GPU time is billed by settling its hold)
    lease = lease_matched(cast.buyer_a, cast.provider_a, price=PRICE)
    # matched ten minutes ago: its GPU has run 600 s (a lease's GPU-seconds are
    # bounded by its GPUs' live time)
    Lease.objects.filter(pk=lease.pk).update(started_at=lease.started_at - timedelta(minutes=10))
    payable = balance(cast.provider_a, Account.Kind.PAYABLE)
    answer = send(
        cast.client(cast.provider_a),
        [gpu_event(cast.buyer_a, lease.usage_subject, quantity=600)],
    )
    assert answer["accepted"] == 1, answer
    assert UsageEvent.objects.get().dimensions["lease_price_micros_per_hour"] == PRICE
    rate()
    # rating leaves it to the hold: not billed twice
    assert balance(cast.provider_a, Account.Kind.PAYABLE) == payable
