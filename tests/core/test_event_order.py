"""Positions are handed out in commit order: a follower reading by position while
writers commit never skips an event that commits after a higher position."""

from __future__ import annotations

import random
import threading
import time

import pytest
from django.db import connections, transaction

from core.eventstore import NewEvent, event_append, events_since
from core.models import Event

pytestmark = pytest.mark.django_db(transaction=True)

WRITERS = 8
APPENDS = 40


def test_a_follower_reading_by_position_never_skips_a_late_commit():
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        rng = random.Random(index)
        try:
            for n in range(APPENDS):
                with transaction.atomic():
                    event_append(
                        stream_type="test.order",
                        stream_id=f"order-{index}-{n}",
                        expected_version=0,
                        events=[NewEvent("Happened", {"writer": index, "n": n})],
                    )
                    # Keep the transaction open a moment after the insert: without
                    # the append lock, a lower position would now commit after a
                    # higher one and a follower would step past it.
                    if rng.random() < 0.3:
                        time.sleep(rng.uniform(0, 0.005))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def follower() -> None:
        position = 0
        try:
            while True:
                finished = done.is_set()
                batch = events_since(position, limit=50, stream_types=["test.order"])
                for event in batch:
                    seen.append(event.position)
                    position = event.position
                if finished and not batch:
                    return
        finally:
            connections.close_all()

    reader = threading.Thread(target=follower)
    reader.start()
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()

    assert errors == []
    stored = list(
        Event.objects.filter(stream_type="test.order")
        .order_by("position")
        .values_list("position", flat=True)
    )
    assert len(stored) == WRITERS * APPENDS
    # Every event seen exactly once, in order: nothing was stepped over.
    assert seen == stored
