"""Writes of metering: ingesting usage events (HTTP batches and internal producers)
and closing a buyer's period.

How a batch is stored, exactly once:

- Each event is checked alone (schema, type rules, time, who may send it); a bad one
  is answered ``rejected`` with its reason and the rest go on.
- Usage has provenance: each event's subject must be one the platform made, of the
  subject buyer (see ``_proven``): a lease's GPU-seconds are priced by the lease,
  and bounded by it (see ``_leases_within_bounds``): a lease's GPU-seconds stored may
  not exceed its GPU count times its live seconds up to the latest of them.
- The good ones are written with one ``INSERT … SELECT FROM jsonb_to_recordset(…) ON
  CONFLICT DO NOTHING RETURNING id`` (PostgreSQL): the unique ``(producer, source,
  id)`` constraint decides duplicates, across batches, requests and all time, even
  when the same event arrives in two concurrent requests (the second waits for the
  first to commit, then skips it). What comes back is ``accepted``; the rest is
  ``duplicate``. Rows go in sorted by ``(source, id)`` (byte order), so
  two batches sharing events wait for each other instead of deadlocking.
- In the same transaction, one ``UsageRecorded`` event naming the new rows is
  appended to the core event store. Rating follows those events, not this table.

Why rating follows core events rather than reading this table by id: ids come from a
sequence at insert time, so a follower reading ``id > last`` can pass over a row whose
transaction commits later than a higher id's. The event store hands out positions
in commit order (its append lock, taken at the insert and held to commit: see
core.eventstore); appending as the last step of the batch holds that lock for a
millisecond, while the row insert itself runs concurrently with other batches. An
exclusive lock on the usage table, the other way, would have serialized the inserts
themselves, and given two ordered logs to follow instead of one. And the batch's rows
are fixed by its event, so rating them again after a crash groups and rounds them
the same way.

Closed periods: the transaction takes ``ROW EXCLUSIVE`` on the usage table before it
reads the closed periods, and ``usage_period_close`` takes ``SHARE`` on it, so a
period cannot close between an ingest's read of it and that ingest's commit.

The steps live in modules named for them: who sends and each event's answer in
``batches``, provenance in ``provenance``, the insert and the append in ``storage``,
a lease's bound in ``lease_bounds``, closing periods in ``periods``. This module
checks a batch and hands it on, and is the app's public surface for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import repeat

from django.utils import timezone

from core.ports import LeaseFacts
from metering.batches import (
    MAX_FUTURE,
    USAGE_TABLE,
    Outcome,
    Sender,
    _id,
    _key,
    _rejected,
    _time,
    month_of,
    next_month,
)
from metering.periods import usage_period_close, usage_periods_close
from metering.provenance import _proven
from metering.schema import Rejection, UsageEventIn, event_validate
from metering.storage import _store_within_bounds

__all__ = [
    "MAX_FUTURE",
    "USAGE_TABLE",
    "Outcome",
    "Sender",
    "month_of",
    "next_month",
    "usage_ingest",
    "usage_period_close",
    "usage_periods_close",
    "usage_record",
]


# --- ingest -----------------------------------------------------------------


def usage_ingest(
    *,
    sender: Sender,
    events: Sequence[UsageEventIn | Rejection],
    now: datetime | None = None,
) -> list[Outcome]:
    """Store a batch of decoded events; one outcome per event, in order.

    Built for the usual batch, where every event is good and new: what can be
    asked of the whole batch at once is (any rejected in decoding? any too far
    ahead? all buyers known? no key twice? all inserted?), in passes that run in C
    (``map``, ``attrgetter``), and only a batch where the answer is yes is looked
    at event by event."""
    now = now or timezone.now()
    horizon = now + MAX_FUTURE
    outcomes: list[Outcome | None] = [None] * len(events)
    if (
        sender.trusted
        and events
        and Rejection not in set(map(type, events))
        and max(map(_time, events)) <= horizon  # type: ignore[arg-type]
    ):
        indices: Sequence[int] = range(len(events))
        good: list[UsageEventIn] = list(events)  # type: ignore[arg-type]
    else:
        indices, good = _checked(sender, events, horizon, outcomes)
    leases: dict[str, LeaseFacts] = {}
    if good:
        indices, good = _proven(sender, indices, good, outcomes, leases)
    if good:
        indices, good = _first_of_each_key(indices, good, outcomes)
    if good:
        new, notes, refused = _store_within_bounds(sender.producer_org_id, good, now, leases)
        if new is None and not notes and not refused:  # all accepted, the usual case
            accepted = map(Outcome, indices, map(_id, good), repeat("accepted"))
            if len(good) == len(events):
                return list(accepted)
            for outcome in accepted:
                outcomes[outcome.index] = outcome
        else:
            for index, event in zip(indices, good, strict=True):
                key = (event.source, event.id)
                if key in refused:
                    outcomes[index] = Outcome(
                        index, event.id, "rejected", "exceeds_lease", refused[key]
                    )
                elif new is not None and key not in new:
                    outcomes[index] = Outcome(index, event.id, "duplicate")
                else:
                    outcomes[index] = Outcome(index, event.id, "accepted", note=notes.get(key, ""))
    return outcomes  # type: ignore[return-value]


def _checked(
    sender: Sender,
    events: Sequence[UsageEventIn | Rejection],
    horizon: datetime,
    outcomes: list[Outcome | None],
) -> tuple[list[int], list[UsageEventIn]]:
    """Event by event: the events decoded, not too far ahead and the sender's to
    send (their indices, and themselves); the others are answered ``rejected``."""
    indices: list[int] = []
    good: list[UsageEventIn] = []
    for index, event in enumerate(events):
        if isinstance(event, Rejection):
            outcomes[index] = _rejected(index, event)
            continue
        if event.time > horizon:
            outcomes[index] = Outcome(
                index,
                event.id,
                "rejected",
                "future",
                f"time {event.time.isoformat()} is more than 5 minutes ahead of the server",
            )
            continue
        if not sender.trusted and (refusal := sender.refusal(event)) is not None:
            outcomes[index] = Outcome(index, event.id, "rejected", "forbidden", refusal)
            continue
        indices.append(index)
        good.append(event)
    return indices, good


def _first_of_each_key(
    indices: Sequence[int], events: list[UsageEventIn], outcomes: list[Outcome | None]
) -> tuple[Sequence[int], list[UsageEventIn]]:
    """The events but those repeating an earlier event's (source, id) in this
    batch, which are answered ``duplicate``."""
    if len(set(map(_key, events))) == len(events):
        return indices, events
    seen: set[tuple[str, str]] = set()
    first: tuple[list[int], list[UsageEventIn]] = ([], [])
    for index, event in zip(indices, events, strict=True):
        key = (event.source, event.id)
        if key in seen:
            outcomes[index] = Outcome(index, event.id, "duplicate", note="repeated in this batch")
        else:
            seen.add(key)
            first[0].append(index)
            first[1].append(event)
    return first


def usage_record(*, events: Sequence[UsageEventIn], now: datetime | None = None) -> list[Outcome]:
    """Internal producers (the runtime, marketplace leases): record usage as the
    platform. The same rules and de-duplication as the HTTP batch."""
    return usage_ingest(
        sender=Sender.platform(), events=[event_validate(e) for e in events], now=now
    )
