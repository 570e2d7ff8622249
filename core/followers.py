"""Followers read the event store in position order and act on each event.

A follower keeps a tracking row (``FollowerPosition``) and writes it in the same
transaction as its effects, so each event takes effect exactly once even though
delivery (polling, a broker nudge, a crash and restart) is at-least-once. The
tracking row is locked while a batch runs, so two copies of the same follower
running at once take turns instead of doing the work twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from core.db import retry_transaction
from core.eventstore import RecordedEvent, events_since
from core.models import Event, FollowerPosition

logger = logging.getLogger(__name__)


class Follower:
    """Subclass, set ``name`` (stable: it keys the tracking row) and
    ``stream_types`` (None for all), implement ``handle``."""

    name: str = ""
    stream_types: tuple[str, ...] | None = None
    # Events per transaction. A follower whose events are big (one usage event
    # names a thousand rows) keeps it small, so its transaction stays short.
    batch_size: int = 500

    def handle(self, event: RecordedEvent) -> None:
        raise NotImplementedError

    def handle_batch(self, events: Sequence[RecordedEvent]) -> None:
        """All the events of one transaction, in order. Override to do them together
        (one read, one write for many events) with the same effects as one by one."""
        for event in events:
            self.handle(event)


_REGISTRY: dict[str, Follower] = {}


def register(follower: Follower) -> Follower:
    if not follower.name:
        raise ValueError("a follower needs a name")
    _REGISTRY[follower.name] = follower
    return follower


def registered() -> list[Follower]:
    return list(_REGISTRY.values())


def follower_position(name: str) -> int:
    row = FollowerPosition.objects.filter(consumer=name).values_list("position", flat=True)
    return next(iter(row), 0)


def follower_behind(follower: Follower, position: int) -> bool:
    """Whether events of the follower's streams came after ``position`` (its tracking
    position, as last read): one indexed read and no transaction, so an idle loop
    can poll often for little."""
    query = Event.objects.filter(position__gt=position)
    if follower.stream_types is not None:
        query = query.filter(stream_type__in=list(follower.stream_types))
    return query.exists()


def follower_run_once(follower: Follower, *, batch_size: int | None = None) -> int:
    """Process up to ``batch_size`` (default: the follower's) new events in one
    transaction; return how many. A deadlock or serialization failure rolls the
    batch back and runs it again: the tracking row moves only with the effects."""
    return _run_batch(follower, batch_size or follower.batch_size)


@retry_transaction
def _run_batch(follower: Follower, batch_size: int) -> int:
    tracking = FollowerPosition.objects.select_for_update().filter(consumer=follower.name).first()
    if tracking is None:  # the follower's first run
        FollowerPosition.objects.get_or_create(consumer=follower.name)
        tracking = FollowerPosition.objects.select_for_update().get(consumer=follower.name)
    events = events_since(tracking.position, limit=batch_size, stream_types=follower.stream_types)
    if events:
        follower.handle_batch(events)
        tracking.position = events[-1].position
        tracking.save(update_fields=["position", "updated_at"])
    return len(events)


def followers_run_until_idle(
    followers: Iterable[Follower] | None = None, *, batch_size: int | None = None
) -> int:
    """Run each follower until it has nothing left; return the events processed."""
    total = 0
    for follower in list(followers) if followers is not None else registered():
        while processed := follower_run_once(follower, batch_size=batch_size):
            total += processed
    return total
