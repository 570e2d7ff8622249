"""Gangs in the node protocol, over the API without agent processes: the claim is a
barrier that answers the same rendezvous to every member once all have claimed;
a member that never claims releases the gang, which is matched again; a lost
member moves the whole gang to its next attempt."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.followers import followers_run_until_idle
from marketplace import services as market
from marketplace.assignments.models import Assignment
from marketplace.assignments.services import assignments_reap
from marketplace.models import Lease, Order
from marketplace.workloads.followers import WorkloadsFollower
from marketplace.workloads.models import FineTuneJob
from providers.models import Node
from tests.marketplace.conftest import fund, offer
from tests.node.conftest import AgentNode, agent_client, agent_node
from tests.node.training import finetune_job, training_events_of

pytestmark = pytest.mark.django_db(transaction=True)

BARRIER = 30


@pytest.fixture(autouse=True)
def _dirs(training_dirs: None, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ASSIGNMENT_GANG_BARRIER_SECONDS = BARRIER


def _gang(cast, *names: str) -> tuple[list[AgentNode], FineTuneJob, list[Assignment]]:  # type: ignore[no-untyped-def]
    nodes = [agent_node(cast.provider_a, name, f"{cast.provider_a.pk}-{name}") for name in names]
    for node in nodes:
        offer(node.node, count=1)
    fund(cast.buyer_a, 50_000_000)
    job = finetune_job(cast.buyer_a, examples=24, epochs=1, batch_size=4, checkpoints=2)
    Order.objects.filter(pk=int(job.order_ref)).update(node_count=2)  # a 2-node gang
    market.matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    members = list(
        Assignment.objects.filter(kind="train", workload_id=job.public_id).order_by("gang_rank")
    )
    return nodes, job, members


def _by_node(nodes: list[AgentNode], member: Assignment) -> AgentNode:
    return next(n for n in nodes if n.node.pk == member.node_id)


def _claim(node: AgentNode, member: Assignment, body: dict) -> dict:
    answer = agent_client(node.key).post(
        f"/api/v1/agent/nodes/{node.node.pk}/assignments/{member.pk}/claim", body, format="json"
    )
    return {"status": answer.status_code, **answer.json()}


def test_the_claim_is_a_barrier_that_answers_one_rendezvous(cast):
    nodes, job, members = _gang(cast, "ga", "gb")
    # given: one member per lease of the gang, queued at the same attempt
    assert len(members) == 2 and members[0].gang == members[1].gang != ""
    assert [(m.gang_rank, m.gang_size, m.attempt, m.state) for m in members] == [
        (0, 2, 0, "queued"),
        (1, 2, 0, "queued"),
    ]
    first, second = _by_node(nodes, members[0]), _by_node(nodes, members[1])
    # when: member 1 claims first, it waits at the barrier
    waiting = _claim(second, members[1], {"endpoint": "10.0.0.2:29501"})
    assert waiting["status"] == 200 and waiting["wait"] is True
    assert waiting["rendezvous"] is None and waiting["attempt"] == 1
    assert waiting["gang_size"] == 2
    # member 0 hosts the rendezvous: its claim must say where
    refused = _claim(first, members[0], {})
    assert refused["status"] == 400 and "endpoint" in refused["error"]["message"]
    bad = _claim(first, members[0], {"endpoint": "not an address"})
    assert bad["status"] == 400
    # then: the last claim completes the gang, and re-posting answers the same
    last = _claim(first, members[0], {"endpoint": "10.0.0.1:29500"})
    assert last["status"] == 200 and last["wait"] is False
    expected = {"id": f"{job.public_id}-a1", "endpoint": "10.0.0.1:29500", "nnodes": 2}
    assert last["rendezvous"] == {**expected, "rank": 0, "host": True}
    before = Assignment.objects.get(pk=members[1].pk).locked_until
    again = _claim(second, members[1], {"attempt": 1})
    assert again["wait"] is False and again["rendezvous"] == {**expected, "rank": 1, "host": False}
    assert Assignment.objects.get(pk=members[1].pk).locked_until > before  # renewed
    # a re-post from another attempt, or a second claim, changes nothing
    assert _claim(second, members[1], {"attempt": 2})["status"] == 409
    assert _claim(second, members[1], {})["status"] == 409
    assert _claim(first, members[1], {"attempt": 1})["status"] == 404  # not its node's


def test_a_member_that_never_claims_releases_the_gang_to_be_matched_again(cast):
    nodes, job, members = _gang(cast, "gc", "gd", "ge")
    claimer, silent = members
    claiming = _by_node(nodes, claimer)
    endpoint = {"endpoint": "10.0.0.1:29500"} if claimer.gang_rank == 0 else {}
    assert _claim(claiming, claimer, endpoint)["wait"] is True
    # when: the barrier runs out (the claimer keeps renewing; the silent one never came)
    now = timezone.now()
    assert assignments_reap(now=now + timedelta(seconds=BARRIER - 5)) == 0
    _claim(claiming, claimer, {"attempt": 1})
    # (the claimer's own TTL is renewed as the agent would; only the barrier matters)
    Assignment.objects.filter(pk=claimer.pk).update(
        locked_until=now + timedelta(seconds=BARRIER + 60)
    )
    assert assignments_reap(now=now + timedelta(seconds=BARRIER + 1)) == 1
    followers_run_until_idle([WorkloadsFollower()])
    # then: the silent member failed, the claimer is told to stop, both leases failed
    silent.refresh_from_db()
    claimer.refresh_from_db()
    assert silent.state == "failed" and "barrier" in silent.failure_reason
    assert claimer.stop_requested and "gang member" in claimer.stop_reason
    assert _claim(claiming, claimer, {"attempt": 1})["stop"] is True
    leases = Lease.objects.filter(pk__in=[claimer.lease_id, silent.lease_id])
    assert {lease.state for lease in leases} == {Lease.State.FAILED}
    assert Node.objects.get(pk=silent.node_id).health == Node.Health.UNHEALTHY
    # and the job waits for the next gang, which the book matches on healthy nodes
    assert FineTuneJob.objects.get(pk=job.pk).status == "queued"
    market.matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    again = list(Assignment.objects.filter(kind="train", workload_id=job.public_id, state="queued"))
    assert len(again) == 2 and silent.node_id not in {m.node_id for m in again}
    assert {m.attempt for m in again} == {1}  # their claims are attempt 2


def test_losing_a_member_moves_the_whole_gang_to_its_next_attempt(cast):
    nodes, job, members = _gang(cast, "gf", "gg", "gh")
    for member in members:
        body = {"endpoint": "10.0.0.1:29500"} if member.gang_rank == 0 else {}
        _claim(_by_node(nodes, member), member, body)
    host, lost = members
    for member in members:
        node = _by_node(nodes, member)
        started = agent_client(node.key).post(
            f"/api/v1/agent/nodes/{node.node.pk}/runs/{member.pk}/events",
            {"attempt": 1, "batch": 1, "events": [{"type": "started"}]},
            format="json",
        )
        assert started.status_code == 200
    # when: member 1's node stops renewing (member 0's keeps going)
    later = timezone.now() + timedelta(seconds=61)
    Assignment.objects.filter(pk=host.pk).update(locked_until=later + timedelta(seconds=60))
    assert assignments_reap(now=later) == 1
    followers_run_until_idle([WorkloadsFollower()])
    # then: the lost member failed, the other is stopped, the gang's leases failed
    lost.refresh_from_db()
    host.refresh_from_db()
    assert lost.state == "failed" and "lost its claim" in lost.failure_reason
    assert host.stop_requested and host.state == "running"
    failed = training_events_of(job.public_id, "TrainingFailed")
    assert len(failed) == 1 and failed[0]["will_retry"] is True and failed[0]["attempt"] == 1
    assert {
        lease.state for lease in Lease.objects.filter(pk__in=[host.lease_id, lost.lease_id])
    } == {Lease.State.FAILED}
    # the surviving member's node reports its end: stopped, nothing more for the job
    node = _by_node(nodes, host)
    ended = agent_client(node.key).post(
        f"/api/v1/agent/nodes/{node.node.pk}/runs/{host.pk}/events",
        {"attempt": 1, "batch": 2, "events": [{"type": "finished", "exit_code": -15}]},
        format="json",
    )
    assert ended.status_code == 200 and ended.json()["state"] == "cancelled"
    assert len(training_events_of(job.public_id, "TrainingFailed")) == 1
    assert not training_events_of(job.public_id, "TrainingCancelled")
    # and the next gang (without the lost node) claims attempt 2
    market.matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    again = list(
        Assignment.objects.filter(kind="train", workload_id=job.public_id, state="queued").order_by(
            "gang_rank"
        )
    )
    assert len(again) == 2 and lost.node_id not in {m.node_id for m in again}
    claims = [
        _claim(_by_node(nodes, m), m, {"endpoint": "10.0.0.3:29500"} if m.gang_rank == 0 else {})
        for m in again
    ]
    assert [c["attempt"] for c in claims] == [2, 2]
    assert claims[-1]["rendezvous"]["id"] == f"{job.public_id}-a2"


def _running(nodes: list[AgentNode], members: list[Assignment]) -> None:
    for member in members:
        body = {"endpoint": "10.0.0.1:29500"} if member.gang_rank == 0 else {}
        _claim(_by_node(nodes, member), member, body)
    for member in members:
        member.refresh_from_db()
        _report(nodes, member, 1, {"type": "started"})


def _report(nodes: list[AgentNode], member: Assignment, batch: int, *events: dict) -> dict:
    node = _by_node(nodes, member)
    answer = agent_client(node.key).post(
        f"/api/v1/agent/nodes/{node.node.pk}/runs/{member.pk}/events",
        {"attempt": member.attempt, "batch": batch, "events": list(events)},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    return answer.json()


def test_a_members_crashed_trainer_requeues_the_whole_gang_on_its_leases(cast, settings):
    settings.ASSIGNMENT_TRAIN_RETRIES = 1
    nodes, job, members = _gang(cast, "gi", "gj")
    _running(nodes, members)
    crashed, peer = members
    # when: member 0's trainer dies by itself
    _report(nodes, crashed, 2, {"type": "log", "stream": "stderr", "text": "Segmentation fault"})
    _report(nodes, crashed, 3, {"type": "finished", "exit_code": -11})
    # then: the other member is told to stop; nothing is decided while it runs
    peer.refresh_from_db()
    assert peer.stop_requested and "gang member 0" in peer.stop_reason
    assert not training_events_of(job.public_id, "TrainingFailed")
    # when: it ends (killed on request), the gang's outcome is decided: a crash
    assert _report(nodes, peer, 2, {"type": "finished", "exit_code": -15})["state"] == "cancelled"
    failed = training_events_of(job.public_id, "TrainingFailed")
    assert [(f["attempt"], f["will_retry"]) for f in failed] == [(1, True)]
    assert "Segmentation fault" in failed[0]["error"]
    again = list(
        Assignment.objects.filter(workload_id=job.public_id, state="queued").order_by("gang_rank")
    )
    assert [(m.lease_id, m.gang_rank, m.attempt) for m in again] == [
        (crashed.lease_id, 0, 1),
        (peer.lease_id, 1, 1),
    ]
    assert again[0].gang == again[1].gang != crashed.gang
    assert {
        lease.state for lease in Lease.objects.filter(pk__in=[crashed.lease_id, peer.lease_id])
    } == {Lease.State.ACTIVE}
    # when: attempt 2 crashes too (one retry allowed), the job fails for good
    _running(nodes, again)
    _report(nodes, again[1], 2, {"type": "finished", "exit_code": 1})
    _report(nodes, again[0], 2, {"type": "finished", "exit_code": 1})
    failed = training_events_of(job.public_id, "TrainingFailed")
    assert [(f["attempt"], f["will_retry"]) for f in failed] == [(1, True), (2, False)]
    assert not Assignment.objects.filter(workload_id=job.public_id, state="queued").exists()


def test_a_trainer_failing_because_its_peers_node_died_is_not_a_crash(cast, settings):
    settings.ASSIGNMENT_TRAIN_RETRIES = 0
    nodes, job, members = _gang(cast, "gk", "gl", "gm")
    _running(nodes, members)
    dead, survivor = members
    # when: member 0's node dies; member 1's trainer fails at once (its peer is gone)
    _report(nodes, survivor, 2, {"type": "finished", "exit_code": 1})
    dead.refresh_from_db()
    assert dead.stop_requested
    later = timezone.now() + timedelta(seconds=61)
    assert assignments_reap(now=later) == 1
    followers_run_until_idle([WorkloadsFollower()])
    # then: the gang moved on as a loss (no retry was allowed for crashes, yet the
    # job waits for its next gang), and its leases failed for the order to match again
    dead.refresh_from_db()
    assert dead.lost and dead.state == "cancelled"
    failed = training_events_of(job.public_id, "TrainingFailed")
    assert [(f["attempt"], f["will_retry"]) for f in failed] == [(1, True)]
    assert FineTuneJob.objects.get(pk=job.pk).status == "queued"
    market.matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    assert Assignment.objects.filter(workload_id=job.public_id, state="queued").count() == 2
