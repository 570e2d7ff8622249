"""Heartbeats: the latest sample per GPU, the minute's rollups, the node's health
following its telemetry. The hot path of the supply side (every node, every few
seconds), so written in plain SQL; see ``node_heartbeat_record``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from django.db import connection, transaction
from django.utils import timezone

from core.db import as_utc, is_postgres, server_cursor
from core.errors import NotFound
from core.models import Organization
from providers.health import (
    XID_DEGRADED_HOLD,
    health_change,
    health_from_telemetry,
    heartbeat_interval_seconds,
)
from providers.models import Gpu, GpuMinuteRollup, GpuSample, Node, NodeHeartbeatMinute
from providers.nvml import APPLICATION_XIDS


@dataclass(frozen=True)
class HeartbeatResult:
    """What the agent is told back. (Not the Node: building a model instance cost a
    tenth of a heartbeat.)"""

    health: str
    health_reason: str
    heartbeat_interval_seconds: int
    unknown_gpu_uuids: list[str]  # not in the inventory: the agent should re-register


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _db_time(moment: datetime | None) -> Any:
    """A datetime as the ORM would bind it (SQLite: naive UTC text), for raw SQL, so
    raw and ORM writes of one column compare equal."""
    return connection.ops.adapt_datetimefield_value(moment)


_ROLLUP_TABLE = GpuMinuteRollup._meta.db_table
_MINUTE_TABLE = NodeHeartbeatMinute._meta.db_table


def _rollup_upsert(*, rows: list[tuple[Any, ...]]) -> None:
    """Fold samples into their GPU's minute: one statement for all of a node's GPUs.
    Rows are sorted by GPU id, so concurrent upserts lock in one order."""
    greatest = "GREATEST" if is_postgres() else "MAX"
    t = _ROLLUP_TABLE

    def fold_max(column: str) -> str:
        return (
            f"{column} = {greatest}(COALESCE({t}.{column}, EXCLUDED.{column}), "
            f"COALESCE(EXCLUDED.{column}, {t}.{column}))"
        )

    placeholders = ", ".join(["(%s, %s, 1, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
    sql = (
        f"INSERT INTO {t} (gpu_id, minute, samples, utilization_samples, utilization_sum, "
        "utilization_max, memory_used_max_mib, temperature_max_c, power_samples, "
        f"power_sum_mw, xid_count) VALUES {placeholders} "
        f"ON CONFLICT (gpu_id, minute) DO UPDATE SET samples = {t}.samples + 1, "
        f"utilization_samples = {t}.utilization_samples + EXCLUDED.utilization_samples, "
        f"utilization_sum = {t}.utilization_sum + EXCLUDED.utilization_sum, "
        f"{fold_max('utilization_max')}, {fold_max('memory_used_max_mib')}, "
        f"{fold_max('temperature_max_c')}, "
        f"power_samples = {t}.power_samples + EXCLUDED.power_samples, "
        f"power_sum_mw = {t}.power_sum_mw + EXCLUDED.power_sum_mw, "
        f"xid_count = {t}.xid_count + EXCLUDED.xid_count"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in sorted(rows) for value in row])


_SAMPLE_TABLE = GpuSample._meta.db_table
_NODE_TABLE = Node._meta.db_table
_GPU_TABLE = Gpu._meta.db_table
_SAMPLE_COLUMNS = (
    "utilization_pct",
    "memory_used_mib",
    "temperature_c",
    "power_mw",
    "ecc_corrected",
    "ecc_uncorrected",
)


def _samples_upsert(*, rows: list[tuple[Any, ...]]) -> None:
    columns = ("gpu_id", "sampled_at", *_SAMPLE_COLUMNS, "xid_events")
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in columns[1:])
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_SAMPLE_TABLE} ({', '.join(columns)}) VALUES {placeholders} "
            f"ON CONFLICT (gpu_id) DO UPDATE SET {updates}",
            [value for row in sorted(rows) for value in row],
        )


def node_heartbeat_record(
    *,
    organization: Organization,
    node_id: int,
    samples: Sequence[dict[str, Any]],
    now: datetime | None = None,
) -> HeartbeatResult:
    """Record a heartbeat: the latest sample per GPU is overwritten, the minute's
    rollups are folded in, the node's health follows its telemetry. Appends an event
    only when health changes.

    This is the hot path (every node, every few seconds), so it is written in plain
    SQL, and on PostgreSQL the common case takes one statement and no transaction of
    its own: a healthy node reporting no fault stays healthy, unless an XID fault
    within XID_DEGRADED_HOLD keeps it degraded; so when no sample reports a fault,
    every write goes in one statement guarded on the node being healthy with no
    recent XID. When the guard does not hold (the node is not healthy, a sample
    reports a fault, the node is missing), the heartbeat is recorded with the node's
    row locked from the read to the commit, and an event if health changed
    (``_heartbeat_record_locked``); so a change appends exactly one event however
    many heartbeats race. A heartbeat is telemetry, not money: it commits without
    waiting for the WAL flush (``synchronous_commit off``), so a crash may lose the
    last few hundred milliseconds of heartbeats and nothing else; health changes,
    which append events, commit durably as usual.
    """
    now = now or timezone.now()
    # Only a transaction of the heartbeat's own may commit without the WAL flush; in a
    # caller's transaction the caller's durability stands.
    own_transaction = not connection.in_atomic_block
    if is_postgres() and not _faults(samples):
        with connection.wrap_database_errors:
            matched = _heartbeat_write_pg(
                organization_id=organization.pk,
                node_id=node_id,
                samples=samples,
                now=now,
                previous=Node.Health.HEALTHY.value,
                xid_at_most=now - XID_DEGRADED_HOLD,
                new_xid_at=None,
                health=Node.Health.HEALTHY.value,
                reason="",
                relaxed=own_transaction,
            )
        if matched is not None:
            return HeartbeatResult(
                health=Node.Health.HEALTHY.value,
                health_reason="",
                heartbeat_interval_seconds=heartbeat_interval_seconds(),
                unknown_gpu_uuids=sorted({s["uuid"] for s in samples} - set(matched)),
            )
    return _heartbeat_record_locked(
        organization=organization,
        node_id=node_id,
        samples=samples,
        now=now,
        own_transaction=own_transaction,
    )


def _faults(samples: Sequence[dict[str, Any]]) -> bool:
    return any(
        (sample.get("ecc_uncorrected") or 0) > 0
        or any(x not in APPLICATION_XIDS for x in sample.get("xid_events") or [])
        for sample in samples
    )


@transaction.atomic
def _heartbeat_record_locked(
    *,
    organization: Organization,
    node_id: int,
    samples: Sequence[dict[str, Any]],
    now: datetime,
    own_transaction: bool,
) -> HeartbeatResult:
    """The heartbeat with the node's row locked from the read to the commit."""
    with connection.wrap_database_errors:
        found = _node_read(organization_id=organization.pk, node_id=node_id)
        previous = found[0][0]
        last_xid_at = as_utc(found[0][1]) if found[0][1] is not None else None
        gpu_ids = {uuid: pk for _, _, uuid, pk in found if uuid is not None}
        known = [sample for sample in samples if sample["uuid"] in gpu_ids]
        unknown = sorted(sample["uuid"] for sample in samples if sample["uuid"] not in gpu_ids)
        new_xid = any(x not in APPLICATION_XIDS for s in known for x in s.get("xid_events") or [])
        if new_xid:
            last_xid_at = now
        health, reason = health_from_telemetry(last_xid_at=last_xid_at, samples=known, now=now)
        changed = health != previous
        if is_postgres():
            _heartbeat_write_pg(
                organization_id=organization.pk,
                node_id=node_id,
                samples=known,
                now=now,
                previous=previous,
                xid_at_most=None,  # locked: what was read is what is there
                new_xid_at=now if new_xid else None,
                health=health,
                reason=reason,
                relaxed=own_transaction and not changed,
            )
        else:
            _heartbeat_write_generic(
                node_id=node_id,
                gpu_ids=gpu_ids,
                samples=known,
                now=now,
                last_xid_at=last_xid_at,
                health=health,
                reason=reason,
            )
    if changed:
        node = Node.objects.get(pk=node_id)
        health_change(node=node, previous=previous, health=health, reason=reason, at=now)
    return HeartbeatResult(
        health=health,
        health_reason=reason,
        heartbeat_interval_seconds=heartbeat_interval_seconds(),
        unknown_gpu_uuids=unknown,
    )


_NODE_READ = (
    f"SELECT n.health, n.last_xid_at, g.uuid, g.id FROM {_NODE_TABLE} n "
    f"LEFT JOIN {_GPU_TABLE} g ON g.node_id = n.id AND g.present "
    "WHERE n.id = %s AND n.organization_id = %s"
)


def _node_read(*, organization_id: int, node_id: int) -> list[tuple[Any, ...]]:
    """The node's health, last XID and present GPUs (one row per GPU), its row locked
    on PostgreSQL (SQLite has one writer anyway). Not found: a 404."""
    if is_postgres():
        cursor = server_cursor()
        cursor.execute(f"{_NODE_READ} FOR UPDATE OF n", [node_id, organization_id], prepare=True)
        found = cursor.fetchall()
    else:
        with connection.cursor() as django_cursor:
            django_cursor.execute(_NODE_READ, [node_id, organization_id])
            found = django_cursor.fetchall()
    if not found:
        raise NotFound(f"node {node_id} not found")
    return found


# Every write of a heartbeat in one statement, guarded on the node's health (and, when
# xid_at_most is given, on its last XID being no later): the node's update comes
# first and the rest join its result, so when the guard fails nothing is written.
# Samples are matched to the node's present GPUs by UUID; the statement answers
# whether the node was written and which UUIDs matched. The samples travel as one
# JSON text that the server unpacks with json_to_recordset (the text does not change
# with the number of GPUs, so the statement is prepared once per connection). The
# rollup folds are _rollup_upsert's; the node's row is locked first and GPU rows in id
# order, as in every writer.
_PG_HEARTBEAT_WRITE = f"""
WITH heard AS (
    UPDATE {_NODE_TABLE}
       SET last_heartbeat_at = %(now)s,
           last_xid_at = COALESCE(%(new_xid_at)s, last_xid_at),
           health_reason = %(reason)s, health = %(health)s::text,
           health_changed_at = CASE WHEN health = %(health)s::text THEN health_changed_at
                                    ELSE %(now)s END
     WHERE id = %(node)s AND organization_id = %(organization)s
       AND health = %(previous)s::text
       AND (%(xid_at_most)s::timestamptz IS NULL OR last_xid_at IS NULL
            OR last_xid_at <= %(xid_at_most)s::timestamptz)
    RETURNING id
), beat AS (
    SELECT g.id AS gpu_id, t.*
      FROM heard
      JOIN {_GPU_TABLE} g ON g.node_id = heard.id AND g.present
      JOIN json_to_recordset(%(samples)s::json)
           AS t(uuid text, utilization_pct integer, memory_used_mib integer,
                temperature_c integer, power_mw integer, ecc_corrected bigint,
                ecc_uncorrected bigint, xid_events jsonb)
        ON t.uuid = g.uuid
), latest AS (
    INSERT INTO {_SAMPLE_TABLE} AS s (gpu_id, sampled_at, utilization_pct, memory_used_mib,
                                      temperature_c, power_mw, ecc_corrected, ecc_uncorrected,
                                      xid_events)
    SELECT gpu_id, %(now)s, utilization_pct, memory_used_mib, temperature_c, power_mw,
           ecc_corrected, ecc_uncorrected, COALESCE(xid_events, '[]')
      FROM beat ORDER BY gpu_id
        ON CONFLICT (gpu_id) DO UPDATE SET
           sampled_at = EXCLUDED.sampled_at, utilization_pct = EXCLUDED.utilization_pct,
           memory_used_mib = EXCLUDED.memory_used_mib, temperature_c = EXCLUDED.temperature_c,
           power_mw = EXCLUDED.power_mw, ecc_corrected = EXCLUDED.ecc_corrected,
           ecc_uncorrected = EXCLUDED.ecc_uncorrected, xid_events = EXCLUDED.xid_events
), rollup AS (
    INSERT INTO {_ROLLUP_TABLE} AS r (gpu_id, minute, samples, utilization_samples,
                                      utilization_sum, utilization_max, memory_used_max_mib,
                                      temperature_max_c, power_samples, power_sum_mw,
                                      xid_count)
    SELECT gpu_id, %(minute)s, 1, (utilization_pct IS NOT NULL)::integer,
           COALESCE(utilization_pct, 0), utilization_pct, memory_used_mib, temperature_c,
           (power_mw IS NOT NULL)::integer, COALESCE(power_mw, 0),
           COALESCE(jsonb_array_length(xid_events), 0)
      FROM beat ORDER BY gpu_id
        ON CONFLICT (gpu_id, minute) DO UPDATE SET
           samples = r.samples + 1,
           utilization_samples = r.utilization_samples + EXCLUDED.utilization_samples,
           utilization_sum = r.utilization_sum + EXCLUDED.utilization_sum,
           utilization_max = GREATEST(COALESCE(r.utilization_max, EXCLUDED.utilization_max),
                                      COALESCE(EXCLUDED.utilization_max, r.utilization_max)),
           memory_used_max_mib = GREATEST(
               COALESCE(r.memory_used_max_mib, EXCLUDED.memory_used_max_mib),
               COALESCE(EXCLUDED.memory_used_max_mib, r.memory_used_max_mib)),
           temperature_max_c = GREATEST(
               COALESCE(r.temperature_max_c, EXCLUDED.temperature_max_c),
               COALESCE(EXCLUDED.temperature_max_c, r.temperature_max_c)),
           power_samples = r.power_samples + EXCLUDED.power_samples,
           power_sum_mw = r.power_sum_mw + EXCLUDED.power_sum_mw,
           xid_count = r.xid_count + EXCLUDED.xid_count
), minute AS (
    INSERT INTO {_MINUTE_TABLE} AS m (node_id, minute, heartbeats)
    SELECT id, %(minute)s, 1 FROM heard
        ON CONFLICT (node_id, minute) DO UPDATE SET heartbeats = m.heartbeats + 1
)
SELECT (SELECT count(*) FROM heard), ARRAY(SELECT uuid FROM beat),
       CASE WHEN %(relaxed)s THEN set_config('synchronous_commit', 'off', true) END
"""


def _heartbeat_write_pg(
    *,
    organization_id: int,
    node_id: int,
    samples: Sequence[dict[str, Any]],
    now: datetime,
    previous: str,
    xid_at_most: datetime | None,
    new_xid_at: datetime | None,
    health: str,
    reason: str,
    relaxed: bool,
) -> list[str] | None:
    """_PG_HEARTBEAT_WRITE: the UUIDs written, or None when the guard did not hold
    (nothing written). ``relaxed``: commit without waiting for the WAL flush."""
    cursor = server_cursor()
    cursor.execute(
        _PG_HEARTBEAT_WRITE,
        {
            "samples": _encode_json(
                [{"uuid": s["uuid"], **{c: s.get(c) for c in _JSON_COLUMNS}} for s in samples]
            ).decode(),
            "now": now,
            "minute": _minute(now),
            "node": node_id,
            "organization": organization_id,
            "previous": previous,
            "xid_at_most": xid_at_most,
            "new_xid_at": new_xid_at,
            "reason": reason,
            "health": health,
            "relaxed": relaxed,
        },
        prepare=True,
    )
    written, matched, _ = cursor.fetchone()
    return matched if written else None


_JSON_COLUMNS = (*_SAMPLE_COLUMNS, "xid_events")
_encode_json = msgspec.json.Encoder().encode


def _heartbeat_write_generic(
    *,
    node_id: int,
    gpu_ids: dict[str, int],
    samples: Sequence[dict[str, Any]],
    now: datetime,
    last_xid_at: datetime | None,
    health: str,
    reason: str,
) -> None:
    """The same writes as _PG_HEARTBEAT_WRITE, statement by statement (SQLite)."""
    minute = _minute(now)
    if samples:
        _samples_upsert(
            rows=[
                (
                    gpu_ids[sample["uuid"]],
                    _db_time(now),
                    *(sample.get(column) for column in _SAMPLE_COLUMNS),
                    json.dumps(list(sample.get("xid_events") or [])),
                )
                for sample in samples
            ]
        )
        _rollup_upsert(
            rows=[
                (
                    gpu_ids[sample["uuid"]],
                    _db_time(minute),
                    int(sample.get("utilization_pct") is not None),
                    sample.get("utilization_pct") or 0,
                    sample.get("utilization_pct"),
                    sample.get("memory_used_mib"),
                    sample.get("temperature_c"),
                    int(sample.get("power_mw") is not None),
                    sample.get("power_mw") or 0,
                    len(sample.get("xid_events") or []),
                )
                for sample in samples
            ]
        )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_MINUTE_TABLE} (node_id, minute, heartbeats) VALUES (%s, %s, 1) "
            f"ON CONFLICT (node_id, minute) DO UPDATE SET "
            f"heartbeats = {_MINUTE_TABLE}.heartbeats + 1",
            [node_id, _db_time(minute)],
        )
        cursor.execute(
            f"UPDATE {_NODE_TABLE} SET last_heartbeat_at = %s, last_xid_at = %s, "
            "health_reason = %s, health = %s, health_changed_at = "
            "CASE WHEN health = %s THEN health_changed_at ELSE %s END WHERE id = %s",
            [
                _db_time(now),
                _db_time(last_xid_at),
                reason,
                health,
                health,
                _db_time(now),
                node_id,
            ],
        )
