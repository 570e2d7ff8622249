"""The event store: one append-only table of facts (``core.models.Event``).

- ``(stream_id, version)`` is unique: an append names the version it expects and
  a conflict raises ``ConcurrencyConflict``; the caller retries from a fresh read.
- ``position`` is global and assigned in commit order. On PostgreSQL every
  INSERT into the table first takes the event store's append lock (an advisory
  lock held to commit, taken by a statement-level trigger before any position
  is drawn: migration 0003), so positions are handed out one committing
  transaction at a time and a follower reading by position never skips a row
  that commits later. Readers are never blocked. The lock is held from the
  insert to the commit, so append events as the last step of a transaction.
  SQLite has one writer at a time, which gives the same order for free.
- An append may carry an idempotency key, unique per tenant: replaying it
  returns the events the first append recorded and writes nothing.
- UPDATE and DELETE on the table are refused by triggers (migration 0002).
- Old payload shapes are upcast on read (``register_upcaster``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import msgspec
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.db import is_postgres, server_cursor
from core.errors import ConcurrencyConflict, IdempotencyConflict
from core.models import Event

EVENT_TABLE = Event._meta.db_table
_COLUMNS = (
    "tenant_id",
    "stream_type",
    "stream_id",
    "version",
    "type",
    "schema_version",
    "payload",
    "metadata",
    "idempotency_key",
    "recorded_at",
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    payload: dict[str, Any]
    schema_version: int = 1


@dataclass(frozen=True)
class DomainEvent:
    """The one base of the apps' event types: a frozen dataclass whose fields are the
    payload, whose ``type`` is its class name (unless it names one) and whose
    ``schema_version`` says which shape it is (old shapes are upcast on read).
    Consumers import the producer's event types and compare ``event.type`` with
    ``TheEvent.type``, never a string of their own."""

    type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("type"):
            cls.type = cls.__name__

    def payload(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_new_event(self) -> NewEvent:
        return NewEvent(type=self.type, payload=self.payload(), schema_version=self.schema_version)


def stream_id(kind: str, key: object) -> str:
    """The one stream-id convention: ``<kind>:<key>`` (``entry:<transfer id>``,
    ``invoice:<key>``, ``finetune_job:<job id>``)."""
    return f"{kind}:{key}"


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    position: int
    tenant_id: int | None
    stream_type: str
    stream_id: str
    version: int
    type: str
    schema_version: int
    payload: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row to insert, with its version already decided (used by batch writers)."""

    stream_type: str
    stream_id: str
    version: int
    type: str
    payload: dict[str, Any]
    schema_version: int = 1
    tenant_id: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None


# --- upcasting --------------------------------------------------------------

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function turning ``event_type``'s payload at ``from_version`` into
    ``from_version + 1``. Reads apply the chain up to the newest shape."""

    def decorate(func: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = func
        return func

    return decorate


def _upcast(event_type: str, schema_version: int, payload: dict[str, Any]) -> tuple[int, dict]:
    while (step := _UPCASTERS.get((event_type, schema_version))) is not None:
        payload = step(payload)
        schema_version += 1
    return schema_version, payload


def _recorded(event: Event) -> RecordedEvent:
    schema_version, payload = _upcast(event.type, event.schema_version, event.payload)
    return RecordedEvent(
        position=event.position,
        tenant_id=event.tenant_id,
        stream_type=event.stream_type,
        stream_id=event.stream_id,
        version=event.version,
        type=event.type,
        schema_version=schema_version,
        payload=payload,
        metadata=event.metadata,
        recorded_at=event.recorded_at,
    )


# --- writing ----------------------------------------------------------------


# Keys sorted at every level, no whitespace, UTF-8 unescaped: byte for byte what
# ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
# gives, in a tenth of the time. The one JSON encoder of events, ledger parameters and
# invoice documents (appenders encode every event's payload, the ledger tens of
# thousands a second, a month's close ten thousand ~4 KB documents).
CANONICAL_JSON = msgspec.json.Encoder(order="sorted")


def json_text(value: Any) -> str:
    """``value`` as canonical JSON text (``CANONICAL_JSON``)."""
    return CANONICAL_JSON.encode(value).decode()


def events_insert(rows: Sequence[EventRow], *, recorded_at: datetime | None = None) -> list[int]:
    """Insert rows whose versions the caller has decided; return their positions in order.

    Must run inside a transaction. Takes the append lock (see the module
    docstring). A duplicate ``(stream_id, version)`` raises ``IntegrityError``,
    which aborts the transaction: the caller's retry loop starts again.
    """
    if not rows:
        return []
    assert transaction.get_connection().in_atomic_block, "events_insert needs a transaction"
    now = recorded_at or timezone.now()
    with connection.cursor() as cursor:
        if is_postgres():
            # One statement for any number of rows; the append lock is taken by
            # the table's trigger before the first position is drawn.
            raw_cursor = server_cursor()
            with connection.wrap_database_errors:
                raw_cursor.execute(
                    EVENTS_INSERT_CTE,
                    events_insert_cte_params(rows, recorded_at=now, metadata=None),
                )
                return sorted(row[0] for row in raw_cursor.fetchall())
        positions = []
        for row in rows:
            cursor.execute(
                f"INSERT INTO {EVENT_TABLE} ({', '.join(_COLUMNS)}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING position",
                _values(row, now),
            )
            positions.append(cursor.fetchone()[0])
        return positions


def _values(row: EventRow, now: datetime) -> tuple:
    return (
        row.tenant_id,
        row.stream_type,
        row.stream_id,
        row.version,
        row.type,
        row.schema_version,
        json_text(row.payload),
        json_text(row.metadata),
        row.idempotency_key,
        now,
    )


def stream_version(stream_id: str) -> int:
    """The version of the newest event in a stream (0 when it has none)."""
    last = Event.objects.filter(stream_id=stream_id).order_by("-version").values_list("version")[:1]
    found = list(last)
    return found[0][0] if found else 0


def event_append(
    *,
    stream_type: str,
    stream_id: str,
    expected_version: int | None,
    events: Sequence[NewEvent],
    tenant_id: int | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> list[RecordedEvent]:
    """Append ``events`` to a stream whose newest version must be ``expected_version``;
    None appends after the newest, whatever it is: for a caller that holds the lock of
    the stream's aggregate (its row), so no other writer can move the stream meanwhile.

    Raises ``ConcurrencyConflict`` when another append got there first. With an
    ``idempotency_key`` seen before for this tenant, returns the events that first
    append recorded (and raises ``IdempotencyConflict`` if they differ).
    """
    if not events:
        raise ValueError("an append needs at least one event")
    meta = dict(metadata or {})
    meta["events_in_append"] = len(events)
    # Without a key the one write is the insert, atomic on its own (its savepoint
    # below): the block is needed only to read a key's first append and write together.
    with transaction.atomic() if idempotency_key is not None else nullcontext():
        if idempotency_key is not None:
            first = _replayed(tenant_id, idempotency_key, stream_id, events)
            if first is not None:
                return first
        current = stream_version(stream_id)
        if expected_version is None:
            expected_version = current
        elif current != expected_version:
            raise ConcurrencyConflict(
                f"stream {stream_id} is at version {current}, not {expected_version}",
                details={"stream_id": stream_id, "current_version": current},
            )
        rows = [
            EventRow(
                stream_type=stream_type,
                stream_id=stream_id,
                version=expected_version + index + 1,
                type=event.type,
                payload=event.payload,
                schema_version=event.schema_version,
                tenant_id=tenant_id,
                metadata=meta,
                idempotency_key=idempotency_key if index == 0 else None,
            )
            for index, event in enumerate(events)
        ]
        now = timezone.now()
        try:
            with transaction.atomic():
                positions = events_insert(rows, recorded_at=now)
        except IntegrityError:
            if idempotency_key is not None:
                first = _replayed(tenant_id, idempotency_key, stream_id, events)
                if first is not None:
                    return first
            raise ConcurrencyConflict(
                f"stream {stream_id} moved past version {expected_version}",
                details={"stream_id": stream_id},
            ) from None
    return [
        RecordedEvent(
            position=position,
            tenant_id=tenant_id,
            stream_type=stream_type,
            stream_id=stream_id,
            version=row.version,
            type=row.type,
            schema_version=row.schema_version,
            payload=row.payload,
            metadata=meta,
            recorded_at=now,
        )
        for position, row in zip(positions, rows, strict=True)
    ]


def _replayed(
    tenant_id: int | None, key: str, stream_id: str, events: Sequence[NewEvent]
) -> list[RecordedEvent] | None:
    first = Event.objects.filter(tenant_id=tenant_id, idempotency_key=key).first()
    if first is None:
        return None
    count = int(first.metadata.get("events_in_append", 1))
    stored = list(
        Event.objects.filter(
            stream_id=first.stream_id, version__gte=first.version, version__lt=first.version + count
        ).order_by("version")
    )
    same = first.stream_id == stream_id and [(e.type, e.payload) for e in stored] == [
        (e.type, json.loads(json_text(e.payload))) for e in events
    ]
    if not same:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was used for a different append",
            details={"idempotency_key": key},
        )
    return [_recorded(event) for event in stored]


# --- reading ----------------------------------------------------------------


def stream_read(stream_id: str, *, after_version: int = 0) -> list[RecordedEvent]:
    query = Event.objects.filter(stream_id=stream_id, version__gt=after_version)
    return [_recorded(event) for event in query.order_by("version")]


def events_since(
    position: int, *, limit: int = 500, stream_types: Iterable[str] | None = None
) -> list[RecordedEvent]:
    """Events after ``position`` in position (= commit) order."""
    query = Event.objects.filter(position__gt=position)
    if stream_types is not None:
        query = query.filter(stream_type__in=list(stream_types))
    return [_recorded(event) for event in query.order_by("position")[:limit]]


def events_iter(
    *, stream_types: Iterable[str] | None = None, chunk: int = 5000
) -> Iterable[RecordedEvent]:
    """Every event from position 0, in order, in chunks (for replays)."""
    position = 0
    types = list(stream_types) if stream_types is not None else None
    while True:
        batch = events_since(position, limit=chunk, stream_types=types)
        if not batch:
            return
        yield from batch
        position = batch[-1].position


# --- composing an append into a bigger statement (PostgreSQL) ---------------
#
# A projection that must be written in the same transaction as its events (the
# ledger's postings and balances) can fold the append into one statement: the
# events' INSERT becomes a CTE whose RETURNING rows the projection joins on.
# The table's trigger takes the append lock as the statement starts.


def events_insert_cte(*, returning: str = "position, stream_id, version") -> str:
    """The events' INSERT for a CTE, returning ``returning`` (columns of the event
    table) of each row: a projection that reads more of the new rows than their
    positions (the ledger's postings read the payloads' legs) names them here."""
    return f"""
INSERT INTO {EVENT_TABLE} ({", ".join(_COLUMNS)})
SELECT t.tenant_id, t.stream_type, t.stream_id, t.version, t.type, t.schema_version,
       t.payload::jsonb, t.metadata::jsonb, t.idempotency_key, %(ev_recorded_at)s
  FROM ROWS FROM (json_to_recordset(%(ev_rows)s::json)
                  AS (tenant_id bigint, stream_type text, stream_id text, version int,
                      type text, schema_version smallint, payload json, metadata json,
                      idempotency_key text))
       WITH ORDINALITY AS t(tenant_id, stream_type, stream_id, version, type, schema_version,
                            payload, metadata, idempotency_key, ord)
 ORDER BY t.ord
RETURNING {returning}
"""


EVENTS_INSERT_CTE = events_insert_cte()


def events_insert_cte_params(
    rows: Sequence[EventRow], *, recorded_at: datetime, metadata: dict[str, Any] | None
) -> dict[str, Any]:
    """Parameters for ``EVENTS_INSERT_CTE``; positions come out in the order of
    ``rows``. ``metadata``, when given, replaces every row's own. The rows travel
    as one JSON document: one parameter to encode, however many rows."""
    return {"ev_recorded_at": recorded_at, "ev_rows": events_cte_rows_encoded(rows, metadata)}


def events_cte_rows_encoded(
    rows: Sequence[EventRow], metadata: dict[str, Any] | None = None
) -> str:
    """``EVENTS_INSERT_CTE``'s ``ev_rows`` parameter (a caller may encode it ahead of
    the statement, outside the locks it takes)."""
    return json_text(events_cte_rows(rows, metadata))


def events_cte_rows(
    rows: Sequence[EventRow], metadata: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The rows as ``EVENTS_INSERT_CTE``'s ``ev_rows`` document holds them, before
    encoding (a caller may encode them itself, ahead of time)."""
    return [
        {
            "tenant_id": r.tenant_id,
            "stream_type": r.stream_type,
            "stream_id": r.stream_id,
            "version": r.version,
            "type": r.type,
            "schema_version": r.schema_version,
            "payload": r.payload,
            "metadata": r.metadata if metadata is None else metadata,
            "idempotency_key": r.idempotency_key,
        }
        for r in rows
    ]
