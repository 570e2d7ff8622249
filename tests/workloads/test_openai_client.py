"""The OpenAI journey with the official ``openai`` client against a live server:
upload, fine-tune the tiny model, watch events, checkpoints, chat with the result
(streamed and not), and find the tokens on the buyer's usage and balance."""

from __future__ import annotations

import pytest
from django.utils import timezone

from core.models import Event
from ledger.events import entry_stream_id
from ledger.selectors import available_credit
from pricing.book import price_at
from pricing.welcome import welcome_transfer_id
from tests.workloads.conftest import openai_client
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"


def available(buyer) -> int:  # type: ignore[no-untyped-def]
    return available_credit(organization_id=buyer.pk, currency="USD")


def welcome_granted(buyer) -> int:  # type: ignore[no-untyped-def]
    """The welcome credit granted to ``buyer`` (0 while not yet)."""
    grant = Event.objects.filter(stream_id=entry_stream_id(welcome_transfer_id(buyer.pk))).first()
    return (
        max((amount for _, side, amount in grant.payload["legs"] if side == "C"), default=0)
        if grant
        else 0
    )


def test_fine_tune_and_chat_journey(cast, live_server, write, chat_bytes, demo_node_agent):
    from openai import OpenAI

    provider_with_capacity(cast.provider_a)
    demo_node_agent(cast.provider_a)  # the job trains there
    buyer_credit(cast.buyer_a, 25_000_000)
    key = cast.client(cast.buyer_a).raw_key
    client: OpenAI = openai_client(live_server, key)

    with platform_running():
        uploaded = client.files.create(
            file=write("train.jsonl", chat_bytes).open("rb"), purpose="fine-tune"
        )
        assert uploaded.status == "processed"

        job = client.fine_tuning.jobs.create(
            model=TINY,
            training_file=uploaded.id,
            suffix="adder",
            seed=7,
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
            },
        )
        assert job.status in ("validating_files", "queued")
        assert job.hyperparameters.n_epochs == 2

        # events while it runs
        seen = wait_for(
            lambda: [
                e
                for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data
                if e.type == "metrics"
            ]
        )
        assert "training loss" in seen[-1].message
        done = wait_for(
            lambda: (
                (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed")
                and j
            )
        )
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model and done.fine_tuned_model.startswith(f"ft:{TINY}:")
        assert done.trained_tokens and done.trained_tokens > 0

        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model

        listed = client.fine_tuning.jobs.list(limit=10)
        assert [j.id for j in listed.data] == [job.id]
        assert done.fine_tuned_model in [m.id for m in client.models.list().data]

        # the balance before the chat: the test's credit plus the welcome credit the
        # platform grants every new buyer (once its follower has run), less the job,
        # which is billed at least the per-job minimum when it succeeds
        welcome = wait_for(lambda: welcome_granted(cast.buyer_a))
        before_chat = available(cast.buyer_a)
        minimum = price_at("fine_tune_minimum", at=timezone.now(), currency="USD").value
        assert minimum > 0 and before_chat <= 25_000_000 + welcome - minimum

        reply = client.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "What is 2 plus 3?"}],
            max_tokens=8,
            seed=1,
        )
        assert reply.usage.prompt_tokens > 0
        assert 0 < reply.usage.completion_tokens <= 8
        streamed = client.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "What is 2 plus 3?"}],
            max_tokens=8,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(streamed)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
        assert text == reply.choices[0].message.content

        # the tokens are on the buyer's usage and, once rated, off its balance
        from metering.models import UsageEvent

        served = UsageEvent.objects.filter(buyer=cast.buyer_a, subject_kind="deployment")
        completion = sum(u.quantity for u in served.filter(type="tokens.completion"))
        assert completion == 2 * reply.usage.completion_tokens
        trained = UsageEvent.objects.filter(buyer=cast.buyer_a, type="tokens.training")
        assert trained.filter(subject_id=job.id).exists()
        wait_for(lambda: available(cast.buyer_a) < before_chat)
