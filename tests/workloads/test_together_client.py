"""The Together journey with the official ``together`` client against a live server,
the invalid-file and 402 answers through both clients, and another org's 404s."""

from __future__ import annotations

import io
import tarfile

import pytest

from pricing.selectors import fine_tune_quote
from tests.workloads.conftest import openai_client, together_client
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"


def test_together_journey_with_estimate_and_download(
    cast, live_server, write, chat_bytes, demo_node_agent
):
    from together import Together

    provider_with_capacity(cast.provider_a)
    demo_node_agent(cast.provider_a)  # the job trains there
    buyer_credit(cast.buyer_a, 25_000_000)
    client: Together = together_client(live_server, cast.client(cast.buyer_a).raw_key)

    with platform_running():
        uploaded = client.files.upload(write("train.jsonl", chat_bytes), purpose="fine-tune")
        assert uploaded.processing_status == "COMPLETED"

        estimate = client.fine_tuning.estimate_price(
            training_file=uploaded.id, model=TINY, n_epochs=2
        )
        book = fine_tune_quote(
            organization_id=cast.buyer_a.pk,
            model=TINY,
            training_type="lora-sft",
            training_tokens=int(estimate.estimated_train_token_count // 2),
            epochs=2,
        )
        assert estimate.estimated_total_price == book.amount_micros / 1_000_000
        assert estimate.allowed_to_proceed is True

        job = client.fine_tuning.create(
            training_file=uploaded.id,
            model=TINY,
            n_epochs=2,
            batch_size=4,
            lora=True,
            suffix="adder",
            random_seed=11,
        )
        assert job.status in ("pending", "queued")
        wait_for(lambda: client.fine_tuning.list_events(job.id).data[-1].type != "job_pending")
        done = wait_for(
            lambda: (
                (j := client.fine_tuning.retrieve(job.id)).status in ("completed", "error") and j
            )
        )
        assert done.status == "completed"
        types = [e.type for e in client.fine_tuning.list_events(job.id).data]
        assert "training_start" in types and "job_complete" in types
        checkpoints = client.fine_tuning.list_checkpoints(job.id).data
        assert checkpoints and checkpoints[0].step > 0

        archive = client.fine_tuning.content(ft_id=job.id, checkpoint="adapter").read()
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as unpacked:
            names = unpacked.getnames()
        assert any(name.endswith(".safetensors") for name in names)

        reply = client.chat.completions.create(
            model=done.x_model_output_name,
            messages=[{"role": "user", "content": "What is 1 plus 2?"}],
            max_tokens=6,
        )
        assert reply.usage.completion_tokens > 0


def test_invalid_file_reason_reaches_both_clients(cast, live_server, write, invalid_bytes):
    import openai
    import together

    key = cast.client(cast.buyer_a).raw_key
    path = write("bad.jsonl", invalid_bytes)

    with pytest.raises(together.BadRequestError) as refused:
        together_client(live_server, key).files.upload(path, purpose="fine-tune", check=False)
    assert "line 3:" in str(refused.value)

    oa = openai_client(live_server, key)
    uploaded = oa.files.create(file=path.open("rb"), purpose="fine-tune")
    assert uploaded.status == "error" and uploaded.status_details.startswith("line 3:")
    with pytest.raises(openai.BadRequestError) as job_refused:
        oa.fine_tuning.jobs.create(model=TINY, training_file=uploaded.id)
    assert job_refused.value.code == "invalid_training_file"
    assert "line 3:" in job_refused.value.message


def test_job_over_credit_is_402_with_the_missing_amount(cast, live_server, write, chat_bytes):
    import openai

    # no credit granted: available is 0, the price book's minimum is more
    oa = openai_client(live_server, cast.client(cast.buyer_b).raw_key)
    uploaded = oa.files.create(file=write("t.jsonl", chat_bytes).open("rb"), purpose="fine-tune")

    with pytest.raises(openai.APIStatusError) as refused:
        oa.fine_tuning.jobs.create(model=TINY, training_file=uploaded.id)

    assert refused.value.status_code == 402
    body = refused.value.body
    assert body["code"] == "insufficient_funds"
    assert body["details"]["missing_micros"] == body["details"]["needed_micros"] > 0


def test_another_orgs_model_and_file_are_404_through_the_clients(
    cast, live_server, write, chat_bytes
):
    import openai

    owner = openai_client(live_server, cast.client(cast.buyer_a).raw_key)
    file_id = owner.files.create(
        file=write("t.jsonl", chat_bytes).open("rb"), purpose="fine-tune"
    ).id
    intruder = openai_client(live_server, cast.client(cast.buyer_b).raw_key)

    with pytest.raises(openai.NotFoundError):
        intruder.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        intruder.fine_tuning.jobs.create(model=TINY, training_file=file_id)
    with pytest.raises(openai.NotFoundError):
        intruder.chat.completions.create(
            model=f"ft:{TINY}:buyer-a:adder:00000000",
            messages=[{"role": "user", "content": "hi"}],
        )
    assert TINY in [m.id for m in intruder.models.list().data]
