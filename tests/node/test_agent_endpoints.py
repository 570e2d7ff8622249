"""Every agent endpoint of the node protocol, called by the wrong caller: another node's
key (404), a revoked key (401), an organization key (403), a stale attempt (409); and
each time nothing changes. Also the claim (one wins) and the reaper."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import services as core
from core.models import ApiKey
from marketplace.assignments import services
from marketplace.assignments.models import Assignment, AssignmentLogLine, NodeAssignmentIndex
from tests.node.conftest import agent_client

pytestmark = pytest.mark.django_db(transaction=True)


def _queued(world) -> Assignment:
    return services.run_create(
        organization=world.cast.buyer_a, lease_id=world.lease.pk, command=["sleep", "600"]
    )


def _snapshot(assignment_id: int) -> tuple:
    run = Assignment.objects.get(pk=assignment_id)
    index = NodeAssignmentIndex.objects.get(node_id=run.node_id).index
    lines = AssignmentLogLine.objects.filter(assignment_id=assignment_id).count()
    return (
        run.state,
        run.attempt,
        run.locked_until,
        run.events_batch,
        run.log_lines,
        run.exit_code,
        index,
        lines,
    )


def _paths(world, run_id: int) -> dict[str, tuple[str, str, dict | None]]:
    node = world.a.node.pk
    base = f"/api/v1/agent/nodes/{node}"
    report = {
        "attempt": 1,
        "batch": 1,
        "events": [{"type": "log", "stream": "stdout", "text": "x"}],
    }
    return {
        "assignments": ("get", f"{base}/assignments?index=0&wait=0", None),
        "claim": ("post", f"{base}/assignments/{run_id}/claim", None),
        "events": ("post", f"{base}/runs/{run_id}/events", report),
    }


def _call(client, method: str, path: str, body: dict | None):
    if method == "get":
        return client.get(path)
    return client.post(path, body or {}, format="json")


def test_another_nodes_key_gets_404_everywhere_and_changes_nothing(world):
    run = _queued(world)
    before = _snapshot(run.pk)
    other = agent_client(world.b.key)  # node B's key, same organization
    for name, (method, path, body) in _paths(world, run.pk).items():
        answer = _call(other, method, path, body)
        assert answer.status_code == 404, (name, answer.content)
        assert answer.json()["error"]["code"] == "not_found"
    # node B's own paths, naming node A's assignment: 404 too
    own = f"/api/v1/agent/nodes/{world.b.node.pk}"
    assert other.post(f"{own}/assignments/{run.pk}/claim").status_code == 404
    answer = other.post(
        f"{own}/runs/{run.pk}/events", {"attempt": 1, "batch": 1, "events": []}, format="json"
    )
    assert answer.status_code == 404
    # node B's blocking query lists nothing of node A's
    listed = other.get(f"{own}/assignments?index=0&wait=0").json()
    assert listed["assignments"] == []
    assert _snapshot(run.pk) == before


def test_a_revoked_key_gets_401_and_an_organization_key_403_everywhere(world):
    run = _queued(world)
    before = _snapshot(run.pk)
    revoked = agent_client(world.a.key)
    core.api_key_revoke(api_key=ApiKey.objects.get(agent_key__node=world.a.node))
    org_key = world.cast.client(world.cast.provider_a)
    for name, (method, path, body) in _paths(world, run.pk).items():
        assert _call(revoked, method, path, body).status_code == 401, name
        assert _call(org_key, method, path, body).status_code == 403, name
        assert _call(world.buyer, method, path, body).status_code == 403, name
    assert _snapshot(run.pk) == before


def test_one_claim_wins_and_a_second_while_it_is_fresh_is_409(world):
    run = _queued(world)
    agent = agent_client(world.a.key)
    claim = f"/api/v1/agent/nodes/{world.a.node.pk}/assignments/{run.pk}/claim"

    first = agent.post(claim)
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["attempt"] == 1 and body["kind"] == "command"
    assert body["spec"]["command"] == ["sleep", "600"]
    assert body["gpu_uuids"] == [world.lease.gpus.get().gpu_uuid]
    assert body["ttl_seconds"] == 30 and body["renew_seconds"] == 10

    before = _snapshot(run.pk)
    second = agent.post(claim)
    assert second.status_code == 409 and "claimed by attempt 1" in second.json()["error"]["message"]
    assert _snapshot(run.pk) == before


def test_a_stale_attempt_gets_409_and_changes_nothing(world):
    run = _queued(world)
    agent = agent_client(world.a.key)
    base = f"/api/v1/agent/nodes/{world.a.node.pk}"
    assert agent.post(f"{base}/assignments/{run.pk}/claim").status_code == 200
    events = f"{base}/runs/{run.pk}/events"
    ok = agent.post(
        events, {"attempt": 1, "batch": 1, "events": [{"type": "started"}]}, format="json"
    )
    assert ok.status_code == 200 and ok.json()["state"] == "running", ok.content

    # an attempt that never was
    before = _snapshot(run.pk)
    stale = {"attempt": 2, "batch": 2, "events": [{"type": "finished", "exit_code": 0}]}
    answer = agent.post(events, stale, format="json")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "stale_attempt"
    assert _snapshot(run.pk) == before

    # the reaper ends attempt 1 once its claim runs out; its late report is stale too
    held = Assignment.objects.get(pk=run.pk)
    assert services.assignments_reap(now=held.locked_until + timedelta(seconds=1)) == 1
    before = _snapshot(run.pk)
    late = {"attempt": 1, "batch": 2, "events": [{"type": "log", "stream": "stdout", "text": "x"}]}
    answer = agent.post(events, late, format="json")
    assert answer.status_code == 409
    assert _snapshot(run.pk) == before
    assert before[0] == "failed"


def test_reports_renew_the_claim_apply_a_batch_once_and_say_stop_after_a_cancel(world):
    run = _queued(world)
    agent = agent_client(world.a.key)
    base = f"/api/v1/agent/nodes/{world.a.node.pk}"
    agent.post(f"{base}/assignments/{run.pk}/claim")
    events = f"{base}/runs/{run.pk}/events"
    batch = {
        "attempt": 1,
        "batch": 1,
        "events": [
            {"type": "started"},
            {"type": "log", "stream": "stdout", "text": "one"},
            {"type": "log", "stream": "stderr", "text": "two"},
        ],
    }
    first = agent.post(events, batch, format="json").json()
    again = agent.post(events, batch, format="json").json()  # the same batch, resent
    assert first["applied"] is True and again["applied"] is False
    assert again["locked_until"] >= first["locked_until"]
    texts = list(
        AssignmentLogLine.objects.filter(assignment=run).order_by("seq").values_list("text", "seq")
    )
    assert texts == [("one", 1), ("two", 2)]
    assert first["stop"] is False

    services.run_cancel(organization=world.cast.buyer_a, lease_id=world.lease.pk, run_id=run.pk)
    renewal = agent.post(events, {"attempt": 1, "batch": 2, "events": []}, format="json").json()
    assert renewal["stop"] is True and renewal["stop_reason"] == "cancelled by the buyer"
    end = {"attempt": 1, "batch": 3, "events": [{"type": "finished", "exit_code": -15}]}
    assert agent.post(events, end, format="json").json()["state"] == "cancelled"


def test_bad_reports_are_400s_that_say_where(world):
    run = _queued(world)
    agent = agent_client(world.a.key)
    base = f"/api/v1/agent/nodes/{world.a.node.pk}"
    agent.post(f"{base}/assignments/{run.pk}/claim")
    events = f"{base}/runs/{run.pk}/events"
    cases = [
        ({"attempt": 1, "batch": 1, "events": [{"type": "log", "text": "x"}]}, "stream"),
        ({"attempt": 1, "batch": 1, "events": [{"type": "finished"}]}, "exit_code"),
        ({"attempt": 1, "batch": 1, "events": [{"type": "explode"}]}, "type"),
        ({"attempt": 0, "batch": 1, "events": []}, "attempt"),
        (
            {
                "attempt": 1,
                "batch": 1,
                "events": [{"type": "finished", "exit_code": 0}, {"type": "started"}],
            },
            "events[1]",
        ),
    ]
    for body, where in cases:
        answer = agent.post(events, body, format="json")
        assert answer.status_code == 400, (body, answer.content)
        assert where in answer.json()["error"]["message"], answer.json()
    assert Assignment.objects.get(pk=run.pk).state == "claimed"
    bad_query = agent.get(f"{base}/assignments?index=-1")
    assert bad_query.status_code == 400 and "index" in bad_query.json()["error"]["message"]
    assert agent.get(f"{base}/assignments?wait=31").status_code == 400
