"""Storing a checked batch exactly once: one ``INSERT … ON CONFLICT DO NOTHING
RETURNING id`` (PostgreSQL; row by row elsewhere), late events moved to the next
open month, the lease bounds checked, and the ``UsageRecorded`` append, in one
transaction (the rule is at the top of ``metering/services.py``)."""

from __future__ import annotations

from datetime import date, datetime

from django.db import connection

from core.db import is_postgres, retry_transaction, server_cursor
from core.eventstore import EventRow, events_insert
from core.ports import LeaseFacts
from metering import events as ev
from metering.batches import USAGE_TABLE, _encode, _key, _org, _time, month_of, next_month
from metering.lease_bounds import _leases_within_bounds, _OverBound
from metering.models import ClosedPeriod
from metering.schema import UsageEventIn, subject_of


def _store_within_bounds(
    producer: int,
    rows: list[UsageEventIn],
    now: datetime,
    leases: dict[str, LeaseFacts],
) -> tuple[set[tuple[str, str]] | None, dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """``_store``, again without the events its bound check refused, until none
    is. Returns what ``_store`` does, and the refused: {(source, id): reason}."""
    refused: dict[tuple[str, str], str] = {}
    while True:
        try:
            new, notes = _store(producer, rows, now, leases)
        except _OverBound as over:
            refused.update(over.refused)
            rows = [e for e in rows if _key(e) not in refused]
            if not rows:
                return set(), {}, refused
            continue
        if refused and new is None:
            new = set(map(_key, rows))  # all stored, but the batch had more
        return new, notes, refused


@retry_transaction
def _store(
    producer: int,
    rows: list[UsageEventIn],
    now: datetime,
    leases: dict[str, LeaseFacts] | None = None,
) -> tuple[set[tuple[str, str]] | None, dict[tuple[str, str], str]]:
    """Insert what is new. Returns the (source, id) of the rows inserted, or None
    when all of them were, and the notes of those counted in a later month. With
    ``leases`` (the facts of the leases whose GPU-seconds are in ``rows``), raises
    ``_OverBound`` when some take their lease past its bound (rolled back)."""
    pg = is_postgres()
    with connection.cursor() as cursor:
        if pg:
            cursor.execute(f"LOCK TABLE {USAGE_TABLE} IN ROW EXCLUSIVE MODE")
        earliest = month_of(min(map(_time, rows)))
        closed: set[tuple[int, date]] = set(
            ClosedPeriod.objects.filter(
                organization_id__in=set(map(_org, rows)), period__gte=earliest
            ).values_list("organization_id", "period")
        )
        late = _late(rows, closed) if closed else {}
        if pg:
            ids, keys = _insert_pg(producer, rows, late, now)
        else:
            ids, keys = _insert_generic(cursor, producer, rows, late, now)
        if leases:
            _leases_within_bounds(rows, ids, keys, leases, now)
        if ids:
            recorded = ev.UsageRecorded(
                usage_ranges=tuple(tuple(r) for r in ev.id_ranges(ids)),  # type: ignore[misc]
                count=len(ids),
                producer_org_id=producer,
            )
            events_insert(
                [
                    EventRow(
                        stream_type=ev.USAGE_STREAM,
                        stream_id=ev.usage_stream_id(min(ids)),
                        version=1,
                        type=ev.USAGE_RECORDED,
                        payload=recorded.payload(),
                        schema_version=recorded.schema_version,
                        tenant_id=producer or None,
                        metadata={"actor": f"producer:{producer}"},
                    )
                ],
                recorded_at=now,
            )
    return keys, {key: note for key, (_, note) in late.items()}


def _late(
    rows: list[UsageEventIn], closed: set[tuple[int, date]]
) -> dict[tuple[str, str], tuple[date, str]]:
    """Events of a month already closed for their buyer: {(source, id): (the next
    open month, the note saying so)}."""
    late = {}
    for event in rows:
        period = month_of(event.time)
        if (event.subject.org, period) not in closed:
            continue
        first = period
        while (event.subject.org, period) in closed:
            period = next_month(period)
        late[(event.source, event.id)] = (
            period,
            f"late: {first:%Y-%m} was closed; counted in {period:%Y-%m}",
        )
    return late


# The events travel as the JSON they came in (msgspec writes the decoded structs
# back out, in C): one round trip, no per-row Python, and jsonb_to_recordset unpacks
# them on the server (jsonb rather than json: a json parameter is parsed twice, on
# input and again to take it apart; jsonb once). The month an event counts in is
# the month of its time as written (as ``month_of`` reads it). (Binding eleven
# arrays of 1,000 values cost more than the insert itself; building a dict per row,
# a fifth of the request.) Rows go in sorted by (source, id) in byte order, sorted
# here (a sort in the statement cost the server more than Python's): two batches
# sharing events then lock them in the same order.
_PG_COLUMNS = f"""
INSERT INTO {USAGE_TABLE} (producer_org_id, source, event_id, type, buyer_id, subject_kind,
                           subject_id, occurred_at, recorded_at, period, quantity, dimensions,
                           note)
SELECT %(producer)s, t.source, t.id, t.type, (t.subject ->> 'org')::bigint,
       CASE WHEN t.subject ->> 'job' IS NOT NULL THEN 'job'
            WHEN t.subject ->> 'deployment' IS NOT NULL THEN 'deployment'
            ELSE 'lease' END,
       COALESCE(t.subject ->> 'job', t.subject ->> 'deployment', t.subject ->> 'lease'),
       t.time::timestamptz, %(now)s, """
_PG_ROWS = """
  FROM jsonb_to_recordset(%(rows)s::jsonb)
       AS t(id text, source text, type text, subject jsonb, time text, quantity bigint,
            dimensions jsonb)"""
_PG_CONFLICT = """
    ON CONFLICT (producer_org_id, source, event_id) DO NOTHING
RETURNING id
"""
_PG_INSERT = (
    _PG_COLUMNS
    + "(left(t.time, 7) || '-01')::date, t.quantity, t.dimensions, ''"
    + _PG_ROWS
    + _PG_CONFLICT
)
# With late events (a month closed for their buyer): those come as a second
# document naming their month and note; the join may reorder, so the statement
# sorts again, in the same byte order.
_PG_INSERT_LATE = (
    _PG_COLUMNS
    + "COALESCE(late.p, (left(t.time, 7) || '-01')::date), t.quantity, t.dimensions, "
    + "COALESCE(late.n, '')"
    + _PG_ROWS
    + """
  LEFT JOIN jsonb_to_recordset(%(late)s::jsonb) AS late(s text, i text, p date, n text)
         ON late.s = t.source AND late.i = t.id
 ORDER BY t.source COLLATE "C", t.id COLLATE "C"
"""
    + _PG_CONFLICT
)


def _insert_pg(
    producer: int,
    rows: list[UsageEventIn],
    late: dict[tuple[str, str], tuple[date, str]],
    now: datetime,
) -> tuple[list[int], set[tuple[str, str]] | None]:
    """The ids inserted, and the (source, id) of the events they hold (None: all)."""
    params = {"producer": producer, "now": now, "rows": _encode(sorted(rows, key=_key)).decode()}
    if late:
        params["late"] = _encode(
            [{"s": s, "i": i, "p": p, "n": n} for (s, i), (p, n) in late.items()]
        ).decode()
    with connection.wrap_database_errors:
        cursor = server_cursor()
        cursor.execute(_PG_INSERT_LATE if late else _PG_INSERT, params, prepare=True)
        ids = [row_id for (row_id,) in cursor.fetchall()]
        if len(ids) == len(rows):  # all new, the usual case: no need to ask which
            return ids, None
        if not ids:
            return [], set()
        cursor.execute(f"SELECT source, event_id FROM {USAGE_TABLE} WHERE id = ANY(%s)", [ids])
        return ids, set(cursor.fetchall())


def _insert_generic(
    cursor,
    producer: int,
    rows: list[UsageEventIn],
    late: dict[tuple[str, str], tuple[date, str]],
    now: datetime,
) -> tuple[list[int], set[tuple[str, str]]]:
    """Row by row (SQLite, the embedded default): the same statement per event."""
    ids: list[int] = []
    keys: set[tuple[str, str]] = set()
    ops = connection.ops
    for e in rows:
        kind, subject = subject_of(e)  # type: ignore[misc]  # checked in schema
        period, note = late.get((e.source, e.id), (month_of(e.time), ""))
        cursor.execute(
            f"INSERT INTO {USAGE_TABLE} (producer_org_id, source, event_id, type, buyer_id, "
            "subject_kind, subject_id, occurred_at, recorded_at, period, quantity, dimensions, "
            "note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (producer_org_id, source, event_id) DO NOTHING RETURNING id",
            [
                producer,
                e.source,
                e.id,
                e.type,
                e.subject.org,
                kind,
                subject,
                ops.adapt_datetimefield_value(e.time),
                ops.adapt_datetimefield_value(now),
                ops.adapt_datefield_value(period),
                e.quantity,
                _encode(e.dimensions).decode(),
                note,
            ],
        )
        found = cursor.fetchone()
        if found is not None:
            ids.append(found[0])
            keys.add((e.source, e.id))
    return ids, keys
