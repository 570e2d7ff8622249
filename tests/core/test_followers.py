"""Followers: an idle poll is one cheap read that sees exactly the follower's news."""

from __future__ import annotations

import pytest

from core.eventstore import NewEvent, event_append
from core.followers import Follower, follower_behind, follower_position, follower_run_once

pytestmark = pytest.mark.django_db


class Counting(Follower):
    name = "tests.counting"
    stream_types = ("tests.watched",)

    def __init__(self) -> None:
        self.seen: list[int] = []

    def handle(self, event) -> None:
        self.seen.append(event.position)


def append(stream_type: str, stream_id: str) -> int:
    return event_append(
        stream_type=stream_type,
        stream_id=stream_id,
        expected_version=0,
        events=[NewEvent("Happened", {})],
    )[0].position


def test_behind_only_for_events_of_its_own_streams():
    follower = Counting()
    assert not follower_behind(follower, follower_position(follower.name))
    append("tests.other", "other-1")
    assert not follower_behind(follower, follower_position(follower.name))
    watched = append("tests.watched", "watched-1")
    assert follower_behind(follower, follower_position(follower.name))
    assert follower_run_once(follower) == 1
    assert follower.seen == [watched]
    assert follower_position(follower.name) == watched
    assert not follower_behind(follower, watched)


def test_handle_batch_gets_a_transactions_events_together():
    class Batching(Counting):
        name = "tests.batching"

        def __init__(self) -> None:
            super().__init__()
            self.batches: list[int] = []

        def handle_batch(self, events) -> None:
            self.batches.append(len(events))
            super().handle_batch(events)

    follower = Batching()
    for n in range(5):
        append("tests.watched", f"w-{n}")
    assert follower_run_once(follower, batch_size=3) == 3
    assert follower_run_once(follower, batch_size=3) == 2
    assert follower.batches == [3, 2]
    assert len(follower.seen) == 5
