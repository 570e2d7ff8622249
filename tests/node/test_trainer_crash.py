"""A trainer that dies by itself (a non-zero exit, not a lost node): the attempt fails
and the run is re-queued on its lease, resuming from the last checkpoint, up to
``ASSIGNMENT_TRAIN_RETRIES`` times; then the job fails with the trainer's last
error lines."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from core.followers import followers_run_until_idle
from marketplace import services as market
from marketplace.assignments.models import Assignment, AssignmentUpload
from marketplace.models import Lease
from marketplace.workloads.followers import WorkloadsFollower
from marketplace.workloads.models import FineTuneJob
from tests.marketplace.conftest import fund, offer
from tests.node.conftest import agent_client, agent_node, wait_for
from tests.node.training import (
    agent_env,
    billed_steps,
    finetune_job,
    platform_running,
    trainer_processes,
    training_events_of,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _dirs(training_dirs: None, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ASSIGNMENT_TRAIN_RETRIES = 1


def _report(node, run: Assignment, attempt: int, *events: dict) -> dict:  # type: ignore[no-untyped-def]
    answer = agent_client(node.key).post(
        f"/api/v1/agent/nodes/{node.node.pk}/runs/{run.pk}/events",
        {"attempt": attempt, "batch": 1, "events": list(events)},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    return answer.json()


def _crash(node, run: Assignment, attempt: int, error: str) -> None:  # type: ignore[no-untyped-def]
    claim = agent_client(node.key).post(
        f"/api/v1/agent/nodes/{node.node.pk}/assignments/{run.pk}/claim"
    )
    assert claim.status_code == 200 and claim.json()["attempt"] == attempt
    _report(
        node,
        run,
        attempt,
        {"type": "started"},
        {"type": "log", "stream": "stdout", "text": '{"event": "not a trainer line"}'},
        {"type": "log", "stream": "stderr", "text": "Traceback (most recent call last):"},
        {"type": "log", "stream": "stderr", "text": '  File "runtime/trainer.py", line 1'},
        {"type": "log", "stream": "stderr", "text": error},
        {"type": "finished", "exit_code": 1},
    )


def test_a_crashed_trainer_is_retried_on_its_lease_then_the_job_fails_with_its_error(cast):
    # given: a fine-tune claimed by node A
    a = agent_node(cast.provider_a, "crash-a", f"{cast.provider_a.pk}-ca")
    offer(a.node, count=2)
    fund(cast.buyer_a, 50_000_000)
    job = finetune_job(cast.buyer_a, examples=24, epochs=1, batch_size=4, checkpoints=2)
    market.matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    first = Assignment.objects.get(kind="train", workload_id=job.public_id)
    # when: its trainer exits 1 by itself
    _crash(a, first, 1, "RuntimeError: CUDA error: an illegal memory access was encountered")
    followers_run_until_idle([WorkloadsFollower()])
    # then: the attempt failed, and the run is queued again on the same lease
    first.refresh_from_db()
    assert first.state == "failed" and first.exit_code == 1
    second = Assignment.objects.get(kind="train", workload_id=job.public_id, state="queued")
    assert (second.lease_id, second.node_id, second.attempt) == (first.lease_id, a.node.pk, 1)
    assert Lease.objects.get(pk=first.lease_id).state == Lease.State.ACTIVE
    failed = training_events_of(job.public_id, "TrainingFailed")
    assert [(f["attempt"], f["will_retry"]) for f in failed] == [(1, True)]
    assert "illegal memory access" in failed[0]["error"]
    assert FineTuneJob.objects.get(pk=job.pk).status == "running"
    # when: attempt 2 crashes too, and that is one more than the retries allowed
    _crash(a, second, 2, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")
    followers_run_until_idle([WorkloadsFollower()])
    # then: nothing more is queued, and the job fails with the trainer's last lines
    assert not Assignment.objects.filter(workload_id=job.public_id, state="queued").exists()
    failed = training_events_of(job.public_id, "TrainingFailed")
    assert [(f["attempt"], f["will_retry"]) for f in failed] == [(1, True), (2, False)]
    done = FineTuneJob.objects.get(pk=job.pk)
    assert done.status == "failed"
    message = done.error["message"]
    assert "exited with code 1" in message and "trainer failure 2 of at most 2" in message
    assert "Traceback (most recent call last):" in message
    assert message.index("Traceback") < message.index("torch.OutOfMemoryError: CUDA out of memory")
    assert "not a trainer line" not in message  # stderr only


def test_a_trainer_killed_on_the_node_resumes_there_from_its_checkpoint(
    cast, start_agent, model_root
):
    # given: a fine-tune training on node A's agent
    a = agent_node(cast.provider_a, "crash-k", f"{cast.provider_a.pk}-ck")
    offer(a.node, count=2)
    fund(cast.buyer_a, 50_000_000)
    agent = start_agent(a, env=agent_env(model_root))
    job = finetune_job(cast.buyer_a, examples=400, epochs=1, batch_size=1, checkpoints=8)
    with platform_running():
        first = wait_for(
            lambda: Assignment.objects.filter(kind="train", workload_id=job.public_id).first(),
            timeout=30,
        )
        wait_for(
            lambda: AssignmentUpload.objects.filter(
                assignment=first, kind="checkpoint", committed_at__isnull=False
            ).exists(),
            timeout=90,
            every=0.02,
        )
        # when: the trainer dies by itself (as the kernel's OOM killer would kill it)
        trainer = [
            pid for pid, parent in trainer_processes().items() if parent == agent.process.pid
        ]
        assert len(trainer) == 1
        os.kill(trainer[0], signal.SIGKILL)
        done = wait_for(
            lambda: (j := FineTuneJob.objects.get(pk=job.pk)).is_terminal and j, timeout=180
        )
    # then: attempt 1 failed with the signal, attempt 2 ran on the same node and lease,
    # resumed from the checkpoint, and the job succeeded with every step billed once
    assert done.status == "succeeded", (done.error, agent.output()[-3000:])
    runs = list(Assignment.objects.filter(kind="train", workload_id=job.public_id).order_by("pk"))
    assert [(r.attempt, r.state, r.exit_code) for r in runs] == [
        (1, "failed", -9),
        (2, "succeeded", 0),
    ]
    assert runs[0].lease_id == runs[1].lease_id and runs[1].node_id == a.node.pk
    started = training_events_of(job.public_id, "TrainingStarted")
    resumed = next(s for s in started if s["attempt"] == 2)
    committed = AssignmentUpload.objects.filter(
        assignment=runs[0], kind="checkpoint", committed_at__isnull=False
    ).values_list("step", flat=True)
    assert resumed["resumed_from_step"] == max(committed) > 0
    total = started[0]["total_steps"]
    assert billed_steps(job.public_id) == sorted(
        f"{job.public_id}:{s}:train" for s in range(1, total + 1)
    )
    assert agent.process.poll() is None  # the agent itself was never in danger


def test_a_node_whose_trainer_cannot_start_fails_the_job_with_its_error(
    cast, start_agent, tmp_path: Path
):
    # given: a node whose model directory is broken (a file where a directory belongs)
    broken = tmp_path / "models-is-a-file"
    broken.write_text("")
    a = agent_node(cast.provider_a, "crash-b", f"{cast.provider_a.pk}-cb")
    offer(a.node, count=2)
    fund(cast.buyer_a, 50_000_000)
    agent = start_agent(a, env=agent_env(broken))
    job = finetune_job(cast.buyer_a, examples=24, epochs=1, batch_size=4, checkpoints=1)
    with platform_running():
        done = wait_for(
            lambda: (j := FineTuneJob.objects.get(pk=job.pk)).is_terminal and j, timeout=120
        )
    # then: two attempts (one retry) crashed, and the job says why, in the trainer's words
    assert done.status == "failed", agent.output()[-3000:]
    runs = list(Assignment.objects.filter(kind="train", workload_id=job.public_id).order_by("pk"))
    assert [(r.attempt, r.state, r.exit_code) for r in runs] == [(1, "failed", 1), (2, "failed", 1)]
    assert "Not a directory" in done.error["message"], done.error
    assert str(broken) in done.error["message"]
