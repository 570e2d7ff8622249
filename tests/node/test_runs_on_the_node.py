"""A buyer's command on a raw lease runs on the leased node through its agent, a real
process talking HTTP to a live server (loopback): its output and exit code come back,
and it is killed, its whole process group, when the run is cancelled or the lease ends."""

from __future__ import annotations

import os
import re
import signal
from datetime import timedelta
from pathlib import Path

import pytest

from core.models import Event
from marketplace import services as market
from marketplace.assignments import services as assignments
from marketplace.assignments.models import Assignment
from tests.node.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Prints its process group (field 5 of /proc/<pid>/stat), leaves a child in the
# background, then waits: everything in the group must die with the run.
LONG = ["sh", "-c", "echo pgid=$(cut -d' ' -f5 /proc/$$/stat); sleep 600 & sleep 600; wait"]


def _create(world, command, **extra):
    answer = world.buyer.post(
        world.runs_url(),
        {"command": command, **extra},
        format="json",
        HTTP_IDEMPOTENCY_KEY=f"run-{len(command)}-{command[-1][:20]}-{extra.get('env', {})}",
    )
    assert answer.status_code == 201, answer.content
    return answer.json()


def _ended(run_id):
    run = Assignment.objects.get(pk=run_id)
    return run if not run.is_live else None


def _logs(world, run_id, after=0):
    answer = world.buyer.get(f"{world.runs_url()}/{run_id}/logs?after={after}")
    assert answer.status_code == 200, answer.content
    return answer.json()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _pgid(world, run_id) -> int:
    def seen():
        text = "\n".join(line["text"] for line in _logs(world, run_id)["lines"])
        found = re.search(r"pgid=(\d+)", text)
        return int(found.group(1)) if found else None

    return wait_for(seen, timeout=10)


def test_a_command_runs_on_the_leased_node_only_and_its_logs_and_exit_code_come_back(
    world, start_agent
):
    # given: both nodes' agents running, the lease on node A
    agent_a = start_agent(world.a)
    agent_b = start_agent(world.b)

    # when: the buyer runs a command with a file and an env variable
    run = _create(
        world,
        [
            "sh",
            "-c",
            'echo "hello $GREETING"; cat input.txt; echo "gpus=$CUDA_VISIBLE_DEVICES"; '
            "echo oops >&2; id -un; ls; exit 3",
        ],
        env={"GREETING": "world"},
        files={"input.txt": "line one\nline two\n"},
    )
    assert run["state"] == "queued" and run["env_names"] == ["GREETING"]
    ended = wait_for(lambda: _ended(run["id"]), timeout=15)

    # then: it ran on node A, failed with its exit code, and its output came back in order
    assert (ended.state, ended.exit_code, ended.attempt) == ("failed", 3, 1)
    assert ended.node_id == world.a.node.pk
    logs = _logs(world, run["id"])
    assert logs["complete"] is True and logs["state"] == "failed"
    stdout = [line["text"] for line in logs["lines"] if line["stream"] == "stdout"]
    stderr = [line["text"] for line in logs["lines"] if line["stream"] == "stderr"]
    gpu = world.lease.gpus.get().gpu_uuid
    assert stdout[:4] == ["hello world", "line one", "line two", f"gpus={gpu}"]
    assert stderr == ["oops"]
    assert [line["seq"] for line in logs["lines"]] == list(range(1, len(logs["lines"]) + 1))
    if os.geteuid() == 0:
        assert stdout[4] == "nobody"  # never as root
    assert "input.txt" in stdout[5:]
    # a cursor: nothing after the last line
    assert _logs(world, run["id"], after=logs["next_after"])["lines"] == []
    # node B's agent never claimed it; one claim, by node A
    claims = Event.objects.filter(stream_id=f"assignment-{run['id']}", type="AssignmentClaimed")
    assert [event.payload["node_id"] for event in claims] == [world.a.node.pk]
    assert f"claimed assignment {run['id']}" not in agent_b.output()
    assert f"claimed assignment {run['id']}" in agent_a.output()
    # the run's work directory is gone
    assert list((agent_a.work_dir / "runs").iterdir()) == []

    # and a command that exits 0 succeeds
    ok = _create(world, ["sh", "-c", "echo done"])
    assert wait_for(lambda: _ended(ok["id"]), timeout=15).state == "succeeded"


def test_run_agent_with_a_key_file_runs_a_command(world, start_agent):
    agent = start_agent(world.a, manage=True)  # manage.py run_agent --key-file
    run = _create(world, ["sh", "-c", "echo from run_agent"])
    ended = wait_for(lambda: _ended(run["id"]), timeout=15)
    assert (ended.state, ended.exit_code) == ("succeeded", 0)
    assert [line["text"] for line in _logs(world, run["id"])["lines"]] == ["from run_agent"]
    assert agent.stop() == 0


def test_a_long_command_is_killed_with_its_process_group_when_the_run_is_cancelled(
    world, start_agent
):
    agent = start_agent(world.a)
    run = _create(world, LONG)
    pgid = _pgid(world, run["id"])
    assert _group_alive(pgid)

    answer = world.buyer.post(f"{world.runs_url()}/{run['id']}/cancel")
    assert answer.status_code == 200 and answer.json()["stop_requested"] is True

    wait_for(lambda: not _group_alive(pgid), timeout=10)
    ended = wait_for(lambda: _ended(run["id"]), timeout=10)
    assert ended.state == "cancelled" and ended.exit_code is not None and ended.exit_code < 0
    assert ended.failure_reason == "cancelled by the buyer"
    # the agent wipes the run's directory once it has reported the end (after, not before)
    wait_for(lambda: list((agent.work_dir / "runs").iterdir()) == [], timeout=10)
    assert agent.process.poll() is None  # the agent goes on


def test_a_long_command_is_killed_with_its_process_group_when_the_lease_ends(world, start_agent):
    start_agent(world.a)
    run = _create(world, LONG)
    pgid = _pgid(world, run["id"])

    market.order_cancel(order=world.order)  # ends its lease

    wait_for(lambda: not _group_alive(pgid), timeout=10)
    ended = wait_for(lambda: _ended(run["id"]), timeout=10)
    assert ended.state == "cancelled" and ended.failure_reason == "lease ended"
    # and the ended lease takes no more runs
    answer = world.buyer.post(
        world.runs_url(), {"command": ["true"]}, format="json", HTTP_IDEMPOTENCY_KEY="after-end"
    )
    assert answer.status_code == 409 and "ended" in answer.json()["error"]["message"]


def test_runs_die_with_the_agent_when_it_is_stopped(world, start_agent):
    agent = start_agent(world.a)
    run = _create(world, LONG)
    pgid = _pgid(world, run["id"])

    # SIGTERM: the agent stops its runs before it exits
    assert agent.stop() == 0
    assert not _group_alive(pgid)
    ended = wait_for(lambda: _ended(run["id"]), timeout=10)
    assert ended.state == "failed" and "agent is stopping" in ended.failure_reason


def _leader_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def test_a_killed_agents_leftovers_are_killed_by_the_next_agent_and_the_reaper_fails_the_run(
    world, start_agent
):
    # given: a run going, and its agent killed outright (no chance to clean up)
    agent = start_agent(world.a)
    run = _create(world, LONG)
    pgid = _pgid(world, run["id"])
    os.kill(agent.process.pid, signal.SIGKILL)
    agent.process.wait(timeout=5)

    # then: the run's first process died with the agent (PR_SET_PDEATHSIG); what it left
    # in the background lives on in its process group until the next agent starts
    wait_for(lambda: _leader_gone(pgid), timeout=5)
    assert _group_alive(pgid)
    start_agent(world.a)  # the same work directory
    wait_for(lambda: not _group_alive(pgid), timeout=10)

    # and the server still holds the dead agent's claim until its TTL: the reaper ends it
    held = Assignment.objects.get(pk=run["id"])
    assert held.state == "running" and held.attempt == 1
    assert assignments.assignments_reap(now=held.locked_until - timedelta(seconds=1)) == 0
    assert assignments.assignments_reap(now=held.locked_until + timedelta(seconds=1)) == 1
    held.refresh_from_db()
    assert held.state == "failed" and "lost its claim" in held.failure_reason
    assert "not retried" in held.failure_reason and held.attempt == 1
