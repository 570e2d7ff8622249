"""A fine-tune trains on the leased node, in a process of that node's agent (a real
process), never in the control plane; when the node dies mid-run, the run moves to
another node (each node a host of its own: a network namespace) and resumes from
its last committed checkpoint, and every step is billed once."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from marketplace.assignments.models import Assignment, AssignmentUpload
from marketplace.models import Lease
from marketplace.workloads.models import FineTuneJob
from metering.models import UsageEvent
from runtime.selectors import training_events as training_stream
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
def _dirs(training_dirs: None) -> None:
    pass


def _netns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_a_fine_tune_trains_on_the_leased_nodes_agent(cast, start_agent, model_root):
    # given: one provider node A with an agent, and a buyer's fine-tune
    a = agent_node(cast.provider_a, "train-a", f"{cast.provider_a.pk}-ta")
    offer(a.node, count=2)
    fund(cast.buyer_a, 50_000_000)
    agent = start_agent(a, env=agent_env(model_root))
    job = finetune_job(cast.buyer_a, examples=24, epochs=2, batch_size=4, checkpoints=2)
    activated = None
    with platform_running():
        # when: the job's order is matched to node A
        lease = wait_for(
            lambda: Lease.objects.filter(order_id=int(job.order_ref), state="active").first(),
            timeout=30,
        )
        activated = lease.started_at
        assert lease.node_id == a.node.pk
        # then: the trainer runs as a child of agent A (not of this process)
        trainers = wait_for(trainer_processes, timeout=30, every=0.02)
        assert set(trainers.values()) == {agent.process.pid}, trainers
        assert os.getpid() not in trainers.values()
        done = wait_for(
            lambda: (j := FineTuneJob.objects.get(pk=job.pk)).is_terminal and j, timeout=60
        )
    assert done.status == "succeeded", (done.error, agent.output()[-3000:])
    started = training_events_of(job.public_id, "TrainingStarted")
    assert started and started[0]["resumed_from_step"] == 0
    assert started[0]["worker"] == f"node-{a.node.pk}"
    total = started[0]["total_steps"]
    assert billed_steps(job.public_id) == sorted(
        f"{job.public_id}:{s}:train" for s in range(1, total + 1)
    )
    # the tokens billed are the control plane's count: an epoch's steps sum to its tokens
    billed = sum(
        UsageEvent.objects.filter(subject_id=job.public_id, type="tokens.training").values_list(
            "quantity", flat=True
        )
    )
    assert billed == started[0]["tokens_per_epoch"] * 2
    succeeded = training_events_of(job.public_id, "TrainingSucceeded")[0]
    assert Path(succeeded["model_location"], "adapter_model.safetensors").is_file()
    assert done.checkpoints.filter(is_final=True).exists()
    run = Assignment.objects.get(kind="train", workload_id=job.public_id)
    assert run.state == "succeeded" and run.node_id == a.node.pk and run.attempt == 1
    assert AssignmentUpload.objects.filter(assignment=run, committed_at__isnull=False).count() >= 3
    first = min(
        e.recorded_at for e in training_stream(job_id=job.public_id) if e.type == "TrainingStarted"
    )
    print(
        f"\nlease activation -> claimed {(run.claimed_at - activated).total_seconds():.2f} s, "
        f"trainer process started {(run.started_at - activated).total_seconds():.2f} s, "
        f"TrainingStarted {(first - activated).total_seconds():.2f} s"
    )


TTL = 4


def test_a_dead_nodes_run_resumes_on_another_node_and_each_step_is_billed_once(
    cast, hosts, model_root, settings
):
    settings.ASSIGNMENT_CLAIM_TTL_SECONDS = TTL
    # given: nodes A and B with agents; only A sells at first, so the job lands there
    a = agent_node(cast.provider_a, "train-a", f"{cast.provider_a.pk}-fa")
    b = agent_node(cast.provider_a, "train-b", f"{cast.provider_a.pk}-fb")
    offer(a.node, count=2)
    fund(cast.buyer_a, 50_000_000)
    # (each agent on a host of its own: a network namespace, reaching the server over
    # its veth and the bridge)
    agent_a = hosts.start(a, env=agent_env(model_root))
    agent_b = hosts.start(b, env=agent_env(model_root))
    assert _netns(agent_a.process.pid) != _netns(agent_b.process.pid) != _netns(os.getpid())
    job = finetune_job(cast.buyer_a, examples=800, epochs=2, batch_size=1, checkpoints=12)
    with platform_running():
        lease_a = wait_for(
            lambda: Lease.objects.filter(order_id=int(job.order_ref), state="active").first(),
            timeout=30,
        )
        assert lease_a.node_id == a.node.pk
        offer(b.node, count=2)  # B sells now: where the run can move
        run_a = wait_for(
            lambda: Assignment.objects.filter(kind="train", workload_id=job.public_id).first()
        )
        # when: once a checkpoint is committed, A's agent is killed (kill -9, its group)
        wait_for(
            lambda: AssignmentUpload.objects.filter(
                assignment=run_a, kind="checkpoint", committed_at__isnull=False
            ).exists(),
            timeout=60,
            every=0.02,
        )
        assert not training_events_of(job.public_id, "TrainingSucceeded"), (
            "the run ended before the kill"
        )
        trainer_a = [
            pid for pid, parent in trainer_processes().items() if parent == agent_a.process.pid
        ]
        os.killpg(agent_a.process.pid, signal.SIGKILL)
        killed = timezone.now()
        agent_a.process.wait(timeout=10)
        # the trainer dies with its agent (PR_SET_PDEATHSIG)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in trainer_a), timeout=10)
        # then: the claim is reaped within the TTL of its last renewal, B takes attempt 2
        run_a = wait_for(
            lambda: (r := Assignment.objects.get(pk=run_a.pk)).state == "failed" and r,
            timeout=TTL + 10,
        )
        run_b = wait_for(
            lambda: Assignment.objects.filter(
                kind="train", workload_id=job.public_id, node_id=b.node.pk, attempt=2
            ).first(),
            timeout=30,
        )
        resumed = wait_for(
            lambda: [
                e for e in training_events_of(job.public_id, "TrainingStarted") if e["attempt"] == 2
            ],
            timeout=60,
        )[0]
        resumed_at = timezone.now()
        # a replayed attempt-1 post from A is refused, and changes nothing
        replay = agent_client(a.key).post(
            f"/api/v1/agent/nodes/{a.node.pk}/runs/{run_a.pk}/events",
            {"attempt": 1, "batch": 999, "events": [{"type": "finished", "exit_code": 0}]},
            format="json",
        )
        assert replay.status_code == 409, replay.content
        stale = agent_client(b.key).post(
            f"/api/v1/agent/nodes/{b.node.pk}/runs/{run_b.pk}/events",
            {"attempt": 1, "batch": 999, "events": [{"type": "finished", "exit_code": 0}]},
            format="json",
        )
        assert stale.status_code == 409, stale.content
        done = wait_for(
            lambda: (j := FineTuneJob.objects.get(pk=job.pk)).is_terminal and j, timeout=90
        )
    assert done.status == "succeeded", (done.error, agent_b.output()[-3000:])
    # B resumed from A's checkpoint, on B
    assert resumed["resumed_from_step"] > 0 and resumed["worker"] == f"node-{b.node.pk}"
    checkpoint_steps = AssignmentUpload.objects.filter(
        assignment=run_a, kind="checkpoint", committed_at__isnull=False
    ).values_list("step", flat=True)
    assert resumed["resumed_from_step"] == max(checkpoint_steps)
    run_a.refresh_from_db()
    assert "lost its claim" in run_a.failure_reason
    assert run_a.finished_at - run_a.renewed_at >= timedelta(seconds=TTL)
    # every step billed exactly once, though some ran on both nodes
    total = resumed["total_steps"]
    steps = billed_steps(job.public_id)
    assert steps == sorted(f"{job.public_id}:{s}:train" for s in range(1, total + 1))
    # A's lease failed at its claim's last renewal: the provider is paid to there
    lease_a.refresh_from_db()
    assert lease_a.state == Lease.State.FAILED
    # (billed in whole GPU-seconds: to the last whole second before it)
    assert timedelta(0) <= run_a.renewed_at - lease_a.billed_until < timedelta(seconds=1)
    assert lease_a.gpu_seconds_billed == lease_a.gpu_count * int(
        (run_a.renewed_at - lease_a.started_at).total_seconds()
    )
    run_b.refresh_from_db()
    assert run_b.state == "succeeded" and run_b.attempt == 2
    print(
        f"\nkill -> reaped {(run_a.finished_at - killed).total_seconds():.2f} s "
        f"(TTL {TTL} s; last renewal -> reaped "
        f"{(run_a.finished_at - run_a.renewed_at).total_seconds():.2f} s), "
        f"kill -> B claimed {(run_b.claimed_at - killed).total_seconds():.2f} s, "
        f"kill -> resumed training started {(resumed_at - killed).total_seconds():.2f} s"
    )


def test_cancelling_a_running_fine_tune_kills_its_trainer_on_the_node(
    cast, start_agent, model_root
):
    from marketplace.workloads import jobs

    # given: a fine-tune training on node A
    a = agent_node(cast.provider_a, "train-c", f"{cast.provider_a.pk}-tc")
    offer(a.node, count=2)
    fund(cast.buyer_a, 50_000_000)
    agent = start_agent(a, env=agent_env(model_root))
    job = finetune_job(cast.buyer_a, examples=800, epochs=2, batch_size=1, checkpoints=4)
    with platform_running():
        wait_for(lambda: training_events_of(job.public_id, "TrainingProgressed"), timeout=60)
        trainers = [
            pid for pid, parent in trainer_processes().items() if parent == agent.process.pid
        ]
        assert trainers
        # when: the buyer cancels it
        jobs.finetune_job_cancel(job=FineTuneJob.objects.get(pk=job.pk))
        done = wait_for(
            lambda: (j := FineTuneJob.objects.get(pk=job.pk)).is_terminal and j, timeout=30
        )
    # then: the trainer is gone, the job cancelled, its lease ended, its steps billed
    assert done.status == "cancelled", agent.output()[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in trainers)
    run = Assignment.objects.get(kind="train", workload_id=job.public_id)
    assert run.state == "cancelled"
    assert training_events_of(job.public_id, "TrainingCancelled")
    assert Lease.objects.get(pk=run.lease_id).state == Lease.State.ENDED
    billed = billed_steps(job.public_id)
    total = training_events_of(job.public_id, "TrainingStarted")[0]["total_steps"]
    assert 1 <= len(billed) < total
