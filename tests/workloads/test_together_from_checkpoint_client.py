"""``from_checkpoint`` through the official ``together`` client (3.1.1) against a live
server, trained by the demo node's real agent: a second fine-tune starts from the
first one's final weights."""

from __future__ import annotations

import pytest

from marketplace.assignments.models import Assignment, AssignmentUpload
from marketplace.workloads.models import FineTuneJob
from tests.workloads.conftest import together_client
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"


def _losses(job_id: str) -> list[float]:
    job = FineTuneJob.objects.get(public_id=job_id)
    steps = job.events.filter(type="training_step").order_by("pk")
    return [float(e.data["loss"]) for e in steps]


def test_a_fine_tune_from_another_jobs_checkpoint_starts_from_its_weights(
    cast, live_server, write, chat_bytes, demo_node_agent
):
    from together import Together

    provider_with_capacity(cast.provider_a)
    demo_node_agent(cast.provider_a)
    buyer_credit(cast.buyer_a, 50_000_000)
    client: Together = together_client(live_server, cast.client(cast.buyer_a).raw_key)

    def finished(job_id: str):  # type: ignore[no-untyped-def]
        return wait_for(
            lambda: (
                (j := client.fine_tuning.retrieve(job_id)).status in ("completed", "error") and j
            )
        )

    with platform_running():
        uploaded = client.files.upload(write("train.jsonl", chat_bytes), purpose="fine-tune")
        first = client.fine_tuning.create(
            training_file=uploaded.id,
            model=TINY,
            n_epochs=2,
            batch_size=4,
            learning_rate=1e-2,
            lora=True,
            random_seed=11,
        )
        assert finished(first.id).status == "completed"
        final_step = client.fine_tuning.list_checkpoints(first.id).data[0].step

        # the client asks the job's model limits, estimates, then creates: no model
        second = client.fine_tuning.create(
            training_file=uploaded.id,
            from_checkpoint=first.id,
            n_epochs=1,
            batch_size=4,
            learning_rate=1e-2,
            random_seed=5,
        )
        assert second.model == TINY
        done = finished(second.id)
        assert done.status == "completed", done

    # its events say where it started
    messages = [e.message for e in client.fine_tuning.list_events(second.id).data]
    assert any(f"Starting from checkpoint {first.id}:{final_step}" in m for m in messages)
    # the node was handed the first job's final checkpoint, and the run began at step 0
    assignment = Assignment.objects.filter(workload_id=second.id).order_by("pk").first()
    assert assignment.spec["init_from"] == {
        "job_id": first.id,
        "step": final_step,
        "label": f"{first.id}:{final_step}",
    }
    assert AssignmentUpload.objects.filter(
        workload_id=first.id, kind="checkpoint", step=final_step, committed_at__isnull=False
    ).exists()
    before, after = _losses(first.id), _losses(second.id)
    assert len(after) == done.total_steps and len(before) == 2 * len(after)
    # its first loss (before its own first update) is below the first job's last one
    # (taken before that job's last update), far below where the first job began: a
    # fresh adapter (LoRA's B is zero) starts at the base model's loss, whatever seed
    assert after[0] < before[-1] < before[0] - 0.5, (before, after)
    # billed as any job: the tokens it trained
    assert FineTuneJob.objects.get(public_id=second.id).trained_tokens == done.token_count
