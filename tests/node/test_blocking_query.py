"""The blocking query over real HTTP (a live server): it answers as soon as one of the
node's assignments changes, and with nothing at its timeout. Both ways of waiting are
tried: PostgreSQL's LISTEN/NOTIFY and the plain re-read of the index (SQLite's way)."""

from __future__ import annotations

import threading
import time

import pytest

from marketplace.assignments import services
from providers.agent import Client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["notify", "poll"])
def waiting(request, settings):
    settings.ASSIGNMENT_WAIT_NOTIFY = request.param == "notify"
    return request.param


def _query(world, live_server, index: int, wait: int) -> tuple[dict, float]:
    client = Client(server=live_server.url, key=world.a.key)
    started = time.monotonic()
    answer = client.get(
        f"/api/v1/agent/nodes/{world.a.node.pk}/assignments?index={index}&wait={wait}",
        timeout=wait + 10,
    )
    return answer, time.monotonic() - started


def test_the_blocking_query_answers_promptly_when_an_assignment_appears(
    world, live_server, waiting
):
    first, _ = _query(world, live_server, index=0, wait=20)  # index 0: at once
    assert first["changed"] is True and first["assignments"] == []
    got: dict = {}

    def wait() -> None:
        got["answer"], got["elapsed"] = _query(world, live_server, first["index"], wait=20)
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    # a moment for the query to start waiting (it answers at once if it is late)
    threading.Event().wait(0.5)
    created_at = time.monotonic()
    run = services.run_create(
        organization=world.cast.buyer_a, lease_id=world.lease.pk, command=["true"]
    )
    waiter.join(timeout=25)

    answer = got["answer"]
    assert answer["changed"] is True and answer["index"] > first["index"]
    assert [(a["id"], a["state"], a["attempt"]) for a in answer["assignments"]] == [
        (run.pk, "queued", 0)
    ]
    assert got["at"] - created_at < 2.0  # not the 20 s wait


def test_the_blocking_query_times_out_empty_when_nothing_changes(world, live_server, waiting):
    first, _ = _query(world, live_server, index=0, wait=0)
    answer, elapsed = _query(world, live_server, first["index"], wait=1)
    assert answer == {"index": first["index"], "changed": False, "assignments": []}
    assert 1.0 <= elapsed < 5.0
