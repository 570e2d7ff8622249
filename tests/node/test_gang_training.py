"""A fine-tune on a 2-node gang lease trains with DDP (gloo, CPU) across two agents,
each a real process on a host of its own (a network namespace): every member's
claim waits at the gang's barrier, then both start torchrun with the same
rendezvous (the job and attempt, member 0's address); both ranks finish, and the
losses are those of the same run on one host with two ranks (``torchrun
--nproc-per-node 2``, run here first as the baseline). Losing a member's node moves
the gang to its next attempt on other nodes, resumed from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.assignments.models import Assignment, AssignmentUpload
from marketplace.models import Lease, Order
from marketplace.workloads import jobs
from marketplace.workloads.models import FineTuneJob
from tests.marketplace.conftest import fund, offer
from tests.node.conftest import ROOT, agent_node, wait_for
from tests.node.training import (
    agent_env,
    billed_steps,
    finetune_job,
    platform_running,
    process_parents,
    trainer_processes,
    training_events_of,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _dirs(training_dirs: None) -> None:
    pass


def _baseline(job: FineTuneJob, model_root: Path, scratch: Path) -> dict:
    """The same work spec on this host, two ranks under one torchrun."""
    scratch.mkdir()
    spec = scratch / "spec.json"
    spec.write_text(json.dumps(jobs.work_spec(job)))
    result = scratch / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "runtime.launch",
            "--spec",
            str(spec),
            "--artifacts",
            str(scratch / "artifacts"),
            "--result",
            str(result),
        ],
        cwd=ROOT,
        env={**os.environ, **agent_env(model_root), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads(result.read_text())


def test_a_gang_lease_trains_with_ddp_across_two_agents(cast, hosts, model_root, tmp_path):
    # given: two nodes of one site, each with an agent on a host of its own (a network
    # namespace on a bridge: tests/node/netns.py)
    a = agent_node(cast.provider_a, "gang-a", f"{cast.provider_a.pk}-ga")
    b = agent_node(cast.provider_a, "gang-b", f"{cast.provider_a.pk}-gb")
    offer(a.node, count=1)
    offer(b.node, count=1)
    fund(cast.buyer_a, 50_000_000)
    job = finetune_job(cast.buyer_a, examples=24, epochs=1, batch_size=4, checkpoints=2)
    # The job's order asks for a gang: one GPU on each of two nodes. (The fine-tune
    # API places one-node orders; this is the order a multi-node job places.)
    Order.objects.filter(pk=int(job.order_ref)).update(node_count=2)
    baseline = _baseline(job, model_root, tmp_path / "baseline")
    assert baseline["outcome"] == "succeeded" and baseline["world_size"] == 2
    agent_a = hosts.start(a, env=agent_env(model_root))
    agent_b = hosts.start(b, env=agent_env(model_root))
    with platform_running():
        # when: the gang is matched, both members claim and meet at the rendezvous
        leases = wait_for(
            lambda: len(ls := list(Lease.objects.filter(order_id=int(job.order_ref)))) == 2 and ls,
            timeout=30,
        )
        assert {lease.node_id for lease in leases} == {a.node.pk, b.node.pk}
        assert len({lease.allocation for lease in leases}) == 1
        # then: a trainer (torchrun and its worker) runs under each agent
        agents = {agent_a.process.pid, agent_b.process.pid}
        wait_for(
            lambda: agents <= {p for pid in trainer_processes() for p in process_parents(pid)[:3]},
            timeout=60,
            every=0.05,
        )
        done = wait_for(
            lambda: (j := FineTuneJob.objects.get(pk=job.pk)).is_terminal and j, timeout=180
        )
    assert done.status == "succeeded", (
        done.error,
        agent_a.output()[-3000:],
        agent_b.output()[-3000:],
    )
    members = list(
        Assignment.objects.filter(kind="train", workload_id=job.public_id).order_by("gang_rank")
    )
    assert [(m.node_id, m.gang_rank, m.gang_size) for m in members] == [
        (leases[0].node_id, 0, 2),
        (leases[1].node_id, 1, 2),
    ]
    assert len({m.gang for m in members}) == 1 and members[0].gang
    assert all(m.state == "succeeded" and m.attempt == 1 for m in members)
    # both agents ran torchrun across the nodes with one rendezvous: job and attempt,
    # hosted at member 0's endpoint
    # (member 0's address: that of its host, reached by the other across the bridge)
    address_of = {
        a.node.pk: hosts.addresses[agent_a.process.pid],
        b.node.pk: hosts.addresses[agent_b.process.pid],
    }
    assert members[0].endpoint.rsplit(":", 1)[0] == address_of[members[0].node_id]
    rendezvous = f"'id': '{job.public_id}-a1', 'endpoint': '{members[0].endpoint}'"
    assert rendezvous in agent_a.output() and rendezvous in agent_b.output()
    started = training_events_of(job.public_id, "TrainingStarted")
    assert len(started) == 1 and started[0]["world_size"] == 2
    total = started[0]["total_steps"]
    # rank 0 reported every step, each billed once, and committed the checkpoints
    assert billed_steps(job.public_id) == sorted(
        f"{job.public_id}:{s}:train" for s in range(1, total + 1)
    )
    assert AssignmentUpload.objects.filter(
        workload_id=job.public_id, kind="checkpoint", committed_at__isnull=False
    ).exists()
    # the losses are the single-host run's, step for step
    losses = {e["step"]: e["loss"] for e in training_events_of(job.public_id, "TrainingProgressed")}
    assert (
        sorted(losses) == list(range(1, total + 1)) == list(range(1, len(baseline["losses"]) + 1))
    )
    for step, loss in losses.items():
        assert loss == pytest.approx(baseline["losses"][step - 1], rel=1e-4, abs=1e-5), step


def test_losing_a_gang_member_moves_the_gang_to_its_next_attempt_from_the_checkpoint(
    cast, hosts, model_root, settings
):
    settings.ASSIGNMENT_CLAIM_TTL_SECONDS = 4
    # given: a gang training on nodes A and B; C sells too, but the gang fits on A and B
    names = ("gang-fa", "gang-fb", "gang-fc")
    a, b, c = (agent_node(cast.provider_a, n, f"{cast.provider_a.pk}-{n}") for n in names)
    offer(a.node, count=1)
    offer(b.node, count=1)
    fund(cast.buyer_a, 50_000_000)
    job = finetune_job(cast.buyer_a, examples=300, epochs=1, batch_size=2, checkpoints=10)
    Order.objects.filter(pk=int(job.order_ref)).update(node_count=2)
    agents = {n.node.pk: hosts.start(n, env=agent_env(model_root)) for n in (a, b, c)}
    with platform_running():
        first = wait_for(
            lambda: (
                len(
                    m := list(
                        Assignment.objects.filter(kind="train", workload_id=job.public_id).order_by(
                            "gang_rank"
                        )
                    )
                )
                == 2
                and m
            ),
            timeout=30,
        )
        assert {m.node_id for m in first} == {a.node.pk, b.node.pk}
        offer(c.node, count=1)  # C sells now: where the gang can re-form
        wait_for(
            lambda: AssignmentUpload.objects.filter(
                workload_id=job.public_id, kind="checkpoint", committed_at__isnull=False
            ).exists(),
            timeout=120,
            every=0.05,
        )
        # when: B's node dies (its agent's whole process group, kill -9)
        os.killpg(agents[b.node.pk].process.pid, signal.SIGKILL)
        # then: the gang re-forms on A and C at attempt 2 and resumes from the checkpoint
        done = wait_for(
            lambda: (j := FineTuneJob.objects.get(pk=job.pk)).is_terminal and j, timeout=300
        )
    outputs = [agent.output()[-2000:] for agent in agents.values()]
    assert done.status == "succeeded", (done.error, outputs)
    runs = list(Assignment.objects.filter(kind="train", workload_id=job.public_id).order_by("pk"))
    second = [r for r in runs if r.attempt == 2]
    assert {r.node_id for r in second} == {a.node.pk, c.node.pk}
    assert all(r.state == "succeeded" for r in second) and len({r.gang for r in second}) == 1
    lost = next(r for r in runs if r.node_id == b.node.pk)
    assert lost.lost and lost.attempt == 1
    started = training_events_of(job.public_id, "TrainingStarted")
    resumed = next(s for s in started if s["attempt"] == 2)
    committed = AssignmentUpload.objects.filter(
        workload_id=job.public_id, attempt=1, kind="checkpoint", committed_at__isnull=False
    ).values_list("step", flat=True)
    assert resumed["resumed_from_step"] == max(committed) > 0 and resumed["world_size"] == 2
    failed = training_events_of(job.public_id, "TrainingFailed")
    assert [(f["attempt"], f["will_retry"]) for f in failed] == [(1, True)]
    total = started[0]["total_steps"]
    assert billed_steps(job.public_id) == sorted(
        f"{job.public_id}:{s}:train" for s in range(1, total + 1)
    )
    # the first gang's leases failed together; B's was billed to its last renewal
    lease_b = Lease.objects.get(pk=lost.lease_id)
    assert lease_b.state == Lease.State.FAILED
    assert lease_b.billed_until <= lost.renewed_at
