"""Batches with the official ``openai`` client against a live server: the requests
run on interruptible capacity through the demo node's real agent (its engine a
subprocess of the agent, as on a provider's machine), the output file downloads and
parses, and every request's tokens are billed once at the price book's batch
discount, a preemption mid-batch included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.utils import timezone

from core.money import rate_amount
from ledger.selectors import available_credit
from marketplace import services as market
from marketplace.models import Lease, Order
from marketplace.workloads.models import BatchRequest, Deployment
from metering.models import UsageEvent
from pricing.book import TOKENS_UNIT, rate_for
from tests.workloads.conftest import jsonl, openai_client
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity, wait_for
from tests.workloads.test_openai_client import welcome_granted

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"
FINISHED = ("completed", "failed", "cancelled", "expired")


def lines(count: int, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"q-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": TINY,
                "messages": [{"role": "user", "content": f"What is {n} plus {n}?"}],
                "max_tokens": max_tokens,
                "seed": n,
            },
        }
        for n in range(count)
    ]


def batch_usage(buyer) -> list[UsageEvent]:  # type: ignore[no-untyped-def]
    return list(UsageEvent.objects.filter(buyer=buyer, dimensions__service_tier="batch"))


def discounted_cost(usage: list[UsageEvent]) -> int:
    """What the rows cost at the batch rate, each rounded once."""
    return sum(
        rate_amount(
            u.quantity, rate_for(u.type, u.dimensions, u.occurred_at).rate_micros, TOKENS_UNIT
        )
        for u in usage
    )


def finished(client, batch_id: str):  # type: ignore[no-untyped-def]
    return wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in FINISHED and b, timeout=240
    )


def test_a_batch_of_50_completes_on_interruptible_capacity(
    cast, live_server, write, demo_node_agent
):
    from openai import OpenAI
    from openai.types.chat import ChatCompletion

    provider_with_capacity(cast.provider_a)
    demo_node_agent(cast.provider_a)
    buyer_credit(cast.buyer_a, 25_000_000)
    client: OpenAI = openai_client(live_server, cast.client(cast.buyer_a).raw_key)

    with platform_running():
        wait_for(lambda: welcome_granted(cast.buyer_a))
        before = available_credit(organization_id=cast.buyer_a.pk, currency="USD")
        uploaded = client.files.create(
            file=write("batch.jsonl", jsonl(lines(50, 8))).open("rb"), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"run": "nightly"},
        )
        assert batch.status == "in_progress" and batch.request_counts.total == 50

        done = finished(client, batch.id)
        assert done.status == "completed", done
        assert done.request_counts.completed == 50 and done.request_counts.failed == 0
        assert done.completed_at and done.finalizing_at and done.error_file_id is None
        assert [b.id for b in client.batches.list(limit=5).data] == [batch.id]

        output = client.files.content(done.output_file_id).text
        rows = [json.loads(line) for line in output.splitlines()]
        assert [row["custom_id"] for row in rows] == [f"q-{n}" for n in range(50)]
        completions = [ChatCompletion.model_validate(row["response"]["body"]) for row in rows]
        assert all(row["response"]["status_code"] == 200 for row in rows)
        assert all(0 < c.usage.completion_tokens <= 8 for c in completions)
        assert done.usage.output_tokens == sum(c.usage.completion_tokens for c in completions)

        # on interruptible capacity: the model's interruptible deployment, leased so
        deployment = Deployment.objects.get(capacity="interruptible")
        assert Lease.objects.get(pk=deployment.lease_ref).kind == Order.Kind.INTERRUPTIBLE

        # each request's tokens once, at the batch discount, and nothing else billed
        usage = batch_usage(cast.buyer_a)
        prompts = [u for u in usage if u.type == "tokens.prompt"]
        assert len(prompts) == 50
        assert sum(u.quantity for u in prompts) == done.usage.input_tokens
        assert sum(u.quantity for u in usage if u.type == "tokens.completion") == (
            done.usage.output_tokens
        )
        cost = discounted_cost(usage)
        full = sum(
            rate_amount(
                u.quantity,
                rate_for(u.type, {"model": TINY}, u.occurred_at).rate_micros,
                TOKENS_UNIT,
            )
            for u in usage
        )
        assert 0 < cost < full
        wait_for(
            lambda: (
                available_credit(organization_id=cast.buyer_a.pk, currency="USD") == before - cost
            )
        )


def test_a_preempted_lease_mid_batch_still_runs_every_request_once(
    cast, live_server, write, demo_node_agent
):
    from openai import OpenAI

    provider_with_capacity(cast.provider_a)
    demo_node_agent(cast.provider_a)
    buyer_credit(cast.buyer_a, 25_000_000)
    client: OpenAI = openai_client(live_server, cast.client(cast.buyer_a).raw_key)

    with platform_running():
        uploaded = client.files.create(
            file=write("batch.jsonl", jsonl(lines(96, 48))).open("rb"), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        # some requests done, the rest pending or in flight: the lease is preempted
        # (what the matching loop does once a preemption's notice runs out)
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 10)
        first = Deployment.objects.get(capacity="interruptible", status="ready")
        lease = Lease.objects.get(pk=first.lease_ref)
        market.lease_end(
            lease=lease,
            state=Lease.State.PREEMPTED,
            reason="preempted for a test's on-demand order",
            outcome="preempted",
            requeue=True,
            now=timezone.now(),
        )
        assert client.batches.retrieve(batch.id).request_counts.completed < 96

        done = finished(client, batch.id)

    assert done.status == "completed", done
    assert done.request_counts.completed == 96
    rows = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(row["custom_id"] for row in rows) == sorted(f"q-{n}" for n in range(96))
    # the rest ran on a second lease of interruptible capacity
    deployments = Deployment.objects.filter(capacity="interruptible").order_by("pk")
    assert deployments.count() >= 2 and deployments[0].status == "stopped"
    assert Lease.objects.get(pk=lease.pk).state == Lease.State.PREEMPTED
    # every request billed once, however often it ran
    usage = batch_usage(cast.buyer_a)
    prompts = [u for u in usage if u.type == "tokens.prompt"]
    assert len(prompts) == 96 == len({u.event_id for u in prompts})
    assert (
        sum(u.quantity for u in usage if u.type == "tokens.completion") == done.usage.output_tokens
    )
    ran_twice = BatchRequest.objects.filter(batch__public_id=batch.id, attempts__gt=1).count()
    assert ran_twice >= 1  # some were in flight when the lease ended
