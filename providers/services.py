"""Every write of the supply side. Keyword-only, typed, one transaction each.

Events are appended as the last step of each transaction (the event store takes its
commit-order lock at the insert and holds it to the commit).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from msgspec import Meta

from core import services as core_services
from core.db import as_utc, is_postgres, server_cursor
from core.errors import Conflict, InvalidInput, NotFound
from core.eventstore import DomainEvent, event_append, stream_version
from core.models import Organization
from core.validation import field_error, validated
from providers import catalog, events
from providers.models import (
    AgentKey,
    Gpu,
    GpuMinuteRollup,
    GpuSample,
    Node,
    NodeHeartbeatMinute,
    NodeLeaseOutcome,
    Offer,
    OfferActivePeriod,
    Site,
)
from providers.nvml import APPLICATION_XIDS

# How long an XID fault keeps a node degraded after it was reported: XIDs are
# one-off events, and a node must not flap back to healthy on the next heartbeat.
XID_DEGRADED_HOLD = timedelta(minutes=10)
# Heartbeat minutes and lease outcomes are the reliability score's inputs: kept for
# its window (30 days) plus a margin. Per-GPU minute rollups are for the portal's
# charts: a week. So a node holds at most 35 x 1,440 heartbeat-minute rows, and a
# GPU one sample row and at most 7 x 1,440 rollup rows, however often it reports.
TELEMETRY_RETENTION = timedelta(days=35)
GPU_ROLLUP_RETENTION = timedelta(days=7)
RELIABILITY_WINDOW = timedelta(days=30)


def heartbeat_timeout() -> timedelta:
    return timedelta(seconds=settings.NODE_HEARTBEAT_TIMEOUT_SECONDS)


def heartbeat_interval_seconds() -> int:
    """What the server tells agents: a quarter of the timeout (at least 1 s, at most
    15 s), so three heartbeats in a row can be lost before a node turns unhealthy and
    every minute of uptime holds at least one heartbeat."""
    return max(1, min(15, int(heartbeat_timeout().total_seconds()) // 4))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _append(*, stream_type: str, stream_id: str, tenant_id: int, event: DomainEvent) -> None:
    # Callers hold the row lock of the aggregate, so the version read here is stable.
    event_append(
        stream_type=stream_type,
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[event.to_new_event()],
        tenant_id=tenant_id,
    )


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _db_time(moment: datetime | None) -> Any:
    """A datetime as the ORM would bind it (SQLite: naive UTC text), for raw SQL, so
    raw and ORM writes of one column compare equal."""
    return connection.ops.adapt_datetimefield_value(moment)


# --- sites and agent keys ---------------------------------------------------


@transaction.atomic
def site_create(*, organization: Organization, name: str, region: str, country: str) -> Site:
    if Site.objects.filter(organization=organization, name=name).exists():
        raise field_error("name", f"your organization already has a site named {name!r}")
    return Site.objects.create(
        organization=organization, name=name, region=region, country=country.upper()
    )


@dataclass(frozen=True)
class CreatedAgentKey:
    agent_key: AgentKey
    raw_key: str


@transaction.atomic
def agent_key_create(
    *, organization: Organization, name: str, node: Node | None = None
) -> CreatedAgentKey:
    """An API key for one node's agent: scope ``agent`` (it reaches only the agent API,
    for the node its first registration binds it to, or ``node``, one of the
    organization's registered nodes, at once). Role ``member``, which an agent key
    never uses: the scope decides what it may do."""
    if node is not None and node.organization_id != organization.pk:
        raise InvalidInput(f"node {node.pk} is not one of {organization.name}'s nodes")
    created = core_services.api_key_create(
        organization=organization, name=f"agent: {name}"[:100], role="member", scope="agent"
    )
    agent_key = AgentKey.objects.create(
        organization=organization, api_key=created.api_key, name=name, node=node
    )
    return CreatedAgentKey(agent_key=agent_key, raw_key=created.raw_key)


# --- nodes: registration and inventory --------------------------------------


def _gpu_summary(gpu: Gpu) -> dict[str, Any]:
    return {
        "uuid": gpu.uuid,
        "index": gpu.index,
        "name": gpu.name,
        "model": gpu.model or None,
        "memory_total_mib": gpu.memory_total_mib,
        "interconnect": gpu.interconnect,
        "mig_mode": gpu.mig_mode,
    }


@transaction.atomic
def node_register(
    *,
    organization: Organization,
    hostname: str,
    inventory: dict[str, Any],
    site_name: str | None = None,
    api_key_id: int | None = None,
    agent_version: str = "",
    inventory_source: str = "nvml",
) -> Node:
    """Register a node, or refresh the inventory of one already registered under the
    same hostname in this organization. ``inventory`` is the agent's report (see
    nvml.NodeInventory.as_dict, already validated by the API's serializer).

    An agent key (``api_key_id`` with an AgentKey row) is bound to the node it first
    registers; registering another hostname with it is a Conflict naming its node.
    Its row is locked first, so two first registrations racing bind it once."""
    now = timezone.now()
    agent_key = (
        AgentKey.objects.select_for_update(of=("self",))
        .select_related("node")
        .filter(api_key_id=api_key_id, organization=organization)
        .first()
        if api_key_id is not None
        else None
    )
    site = None
    if site_name:
        site = Site.objects.filter(organization=organization, name=site_name).first()
        if site is None:
            raise field_error(
                "site", f"your organization has no site named {site_name!r}; create it first"
            )
    reported = inventory["gpus"]
    uuids = [gpu["uuid"] for gpu in reported]
    taken = (
        Gpu.objects.filter(uuid__in=uuids)
        .exclude(node__organization=organization)
        .values_list("uuid", flat=True)
    )
    if taken:
        # Says nothing of why: that another organization holds a UUID is its business.
        refused = sorted(taken)[0]
        raise Conflict(
            f"GPU {refused} cannot be registered",
            details={"fields": {"gpus": [f"GPU {refused} cannot be registered"]}},
        )

    node = (
        Node.objects.select_for_update()
        .filter(organization=organization, hostname=hostname)
        .first()
    )
    bound = agent_key.node if agent_key is not None else None
    if bound is not None and (node is None or node.pk != bound.pk):
        raise Conflict(
            f"this agent key belongs to node {bound.pk} ({bound.hostname}), not {hostname!r}; "
            "create an agent key for each node",
            details={"node_id": bound.pk, "hostname": bound.hostname},
        )
    is_new = node is None
    if node is None:
        node = Node(organization=organization, hostname=hostname, registered_at=now)
    previous_site_id = node.site_id
    if site is not None:
        node.site = site
    node.api_key_id = api_key_id
    node.driver_version = inventory.get("driver_version", "")
    node.cuda_version = inventory.get("cuda_version", "")
    node.agent_version = agent_version
    node.inventory_source = inventory_source
    node.heartbeat_interval_seconds = heartbeat_interval_seconds()
    node.save()
    if agent_key is not None and bound is None:
        AgentKey.objects.filter(pk=agent_key.pk).update(node=node)

    existing = {gpu.uuid: gpu for gpu in Gpu.objects.select_for_update().filter(uuid__in=uuids)}
    before = {gpu.uuid: _gpu_summary(gpu) for gpu in node.gpus.filter(present=True)}
    for item in reported:
        found = catalog.model_for_nvml_name(item["name"], item["memory_total_mib"])
        gpu = existing.get(item["uuid"]) or Gpu(uuid=item["uuid"])
        gpu.node = node
        gpu.index = item["index"]
        gpu.name = item["name"]
        gpu.model = found.slug if found else ""
        gpu.memory_total_mib = item["memory_total_mib"]
        gpu.interconnect = item.get("interconnect") or (found.interconnect if found else "pcie")
        gpu.nvlink_links = item.get("nvlink_links") or 0
        gpu.pcie_generation = item.get("pcie_generation")
        gpu.pcie_width = item.get("pcie_width")
        gpu.mig_mode = item.get("mig_mode")
        gpu.present = True
        gpu.save()
    removed = sorted(set(before) - set(uuids))
    Gpu.objects.filter(node=node, uuid__in=removed).update(present=False)
    after = {gpu.uuid: _gpu_summary(gpu) for gpu in node.gpus.filter(present=True)}

    region = node.site.region if node.site is not None else None
    if is_new:
        event: DomainEvent = events.NodeRegistered(
            node_id=node.pk,
            organization_id=organization.pk,
            hostname=hostname,
            site_id=node.site_id,
            region=region,
            driver_version=node.driver_version,
            cuda_version=node.cuda_version,
            inventory_source=inventory_source,
            gpus=list(after.values()),
            at=now.isoformat(),
        )
    elif after != before or previous_site_id != node.site_id:
        event = events.NodeInventoryChanged(
            node_id=node.pk,
            organization_id=organization.pk,
            site_id=node.site_id,
            region=region,
            gpus=list(after.values()),
            removed_gpu_uuids=removed,
            at=now.isoformat(),
        )
    else:
        return node  # the same inventory again (an agent restart): nothing happened
    _append(stream_type="node", stream_id=f"node-{node.pk}", tenant_id=organization.pk, event=event)
    return node


# --- heartbeats, telemetry and health ---------------------------------------


@dataclass(frozen=True)
class HeartbeatResult:
    """What the agent is told back. (Not the Node: building a model instance cost a
    tenth of a heartbeat.)"""

    health: str
    health_reason: str
    heartbeat_interval_seconds: int
    unknown_gpu_uuids: list[str]  # not in the inventory: the agent should re-register


def _health_from_telemetry(
    *, last_xid_at: datetime | None, samples: Sequence[dict[str, Any]], now: datetime
) -> tuple[str, str]:
    faults = []
    for sample in samples:
        if (sample.get("ecc_uncorrected") or 0) > 0:
            faults.append(
                f"GPU {sample['uuid']}: {sample['ecc_uncorrected']} uncorrectable "
                "(double-bit) ECC errors"
            )
        hardware = [x for x in sample.get("xid_events") or [] if x not in APPLICATION_XIDS]
        if hardware:
            faults.append(f"GPU {sample['uuid']}: XID {', '.join(map(str, hardware))}")
    if faults:
        return Node.Health.DEGRADED, "; ".join(faults)[:500]
    if last_xid_at is not None and now - last_xid_at < XID_DEGRADED_HOLD:
        return Node.Health.DEGRADED, (
            f"XID fault at {last_xid_at.isoformat()} "
            f"(degraded for {int(XID_DEGRADED_HOLD.total_seconds() // 60)} minutes after one)"
        )
    return Node.Health.HEALTHY, ""


def _health_change(*, node: Node, previous: str, health: str, reason: str, at: datetime) -> None:
    _append(
        stream_type="node",
        stream_id=f"node-{node.pk}",
        tenant_id=node.organization_id,
        event=events.NodeHealthChanged(
            node_id=node.pk,
            organization_id=node.organization_id,
            previous=previous,
            health=health,
            reason=reason,
            last_heartbeat_at=_iso(node.last_heartbeat_at),
            at=at.isoformat(),
        ),
    )


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
        health, reason = _health_from_telemetry(last_xid_at=last_xid_at, samples=known, now=now)
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
        _health_change(node=node, previous=previous, health=health, reason=reason, at=now)
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


def node_health_sweep(*, now: datetime | None = None) -> list[int]:
    """Mark nodes whose heartbeats stopped for longer than the timeout unhealthy, one
    event per node that changes. Returns their ids. Safe to run from many processes:
    each change is claimed with a conditional update."""
    now = now or timezone.now()
    cutoff = now - heartbeat_timeout()
    live = [Node.Health.HEALTHY, Node.Health.DEGRADED, Node.Health.UNKNOWN]
    stale = Node.objects.filter(health__in=live).filter(
        Q(last_heartbeat_at__lt=cutoff)
        | Q(last_heartbeat_at__isnull=True, registered_at__lt=cutoff)
    )
    changed = []
    for node in stale.order_by("pk"):
        with transaction.atomic():
            claimed = Node.objects.filter(
                pk=node.pk, health=node.health, last_heartbeat_at=node.last_heartbeat_at
            ).update(
                health=Node.Health.UNHEALTHY,
                health_changed_at=now,
                health_reason=(reason := _silence_reason(node=node, now=now)),
            )
            if not claimed:
                continue  # a heartbeat or another sweeper got there first
            _health_change(
                node=node,
                previous=node.health,
                health=Node.Health.UNHEALTHY,
                reason=reason,
                at=now,
            )
        changed.append(node.pk)
    return changed


def node_health_lost(*, node_id: int, reason: str, now: datetime | None = None) -> bool:
    """The node stopped renewing a claim on leased work (its agent died, or lost the
    network): unhealthy now, so no new lease lands on it, without waiting for the
    heartbeat timeout. Its next heartbeat makes it healthy again. False when it was
    unhealthy already."""
    now = now or timezone.now()
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(pk=node_id).first()
        if node is None or node.health == Node.Health.UNHEALTHY:
            return False
        previous = node.health
        Node.objects.filter(pk=node_id).update(
            health=Node.Health.UNHEALTHY, health_changed_at=now, health_reason=reason[:500]
        )
        _health_change(
            node=node, previous=previous, health=Node.Health.UNHEALTHY, reason=reason, at=now
        )
    return True


def _silence_reason(*, node: Node, now: datetime) -> str:
    timeout = int(heartbeat_timeout().total_seconds())
    if node.last_heartbeat_at is None:
        return f"no heartbeat since registration, more than {timeout} s ago"
    silent = int((now - node.last_heartbeat_at).total_seconds())
    return f"no heartbeat for {silent} s (timeout {timeout} s)"


@transaction.atomic
def telemetry_prune(*, now: datetime | None = None) -> int:
    """Delete telemetry older than its retention (see TELEMETRY_RETENTION)."""
    now = now or timezone.now()
    cutoff = now - TELEMETRY_RETENTION
    deleted = GpuMinuteRollup.objects.filter(minute__lt=now - GPU_ROLLUP_RETENTION).delete()[0]
    deleted += NodeHeartbeatMinute.objects.filter(minute__lt=cutoff).delete()[0]
    deleted += NodeLeaseOutcome.objects.filter(ended_at__lt=cutoff).delete()[0]
    return deleted


# --- reliability ------------------------------------------------------------


@transaction.atomic
def node_lease_outcome_record(
    *, node: Node, lease_id: str, outcome: str, ended_at: datetime
) -> NodeLeaseOutcome:
    """How a lease on ``node`` ended; for the marketplace to call as leases end.
    Idempotent on ``lease_id``: the first outcome recorded stands."""
    if outcome not in NodeLeaseOutcome.Outcome.values:
        raise field_error("outcome", f"must be one of {', '.join(NodeLeaseOutcome.Outcome)}")
    if timezone.is_naive(ended_at):
        raise field_error("ended_at", "must be timezone-aware")
    found, _ = NodeLeaseOutcome.objects.get_or_create(
        lease_id=lease_id, defaults={"node": node, "outcome": outcome, "ended_at": ended_at}
    )
    return found


def node_reliability_refresh(*, node: Node, now: datetime | None = None) -> float | None:
    """Store the node's current score on it, for the matcher and buyer filters."""
    from providers.selectors import node_reliability

    score = node_reliability(node=node, now=now).score
    Node.objects.filter(pk=node.pk).update(reliability_score=score)
    return score


# --- offers -----------------------------------------------------------------


def _overlaps(
    a_start: datetime, a_end: datetime | None, b_start: datetime, b_end: datetime | None
) -> bool:
    """Half-open [start, end) windows; None is open-ended."""
    return (b_end is None or a_start < b_end) and (a_end is None or b_start < a_end)


def _offer_event(offer: Offer, event: DomainEvent) -> None:
    _append(
        stream_type="offer",
        stream_id=f"offer-{offer.pk}",
        tenant_id=offer.organization_id,
        event=event,
    )


MAX_GPUS_PER_NODE = 64
MAX_PRICE_MICROS = 10**12  # per GPU-hour: a million units of the currency
Seconds = Annotated[int, Meta(ge=60, le=10**8)]
Aware = Annotated[datetime, Meta(tz=True)]


class OfferInput(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a provider lists, with the bounds of each field; ``offer_create`` checks it
    (core.validation) and then the rules against the node and between fields."""

    node_id: Annotated[int, Meta(ge=1)]
    gpu_model: Annotated[str, Meta(min_length=1, max_length=64)]
    gpu_count: Annotated[int, Meta(ge=1, le=MAX_GPUS_PER_NODE)]
    price_per_gpu_hour_micros: Annotated[int, Meta(ge=1, le=MAX_PRICE_MICROS)]
    kind: Offer.Kind
    window_start: Aware | None = None
    window_end: Aware | None = None
    min_lease_seconds: Seconds = 3600
    max_lease_seconds: Seconds | None = None
    preemption_grace_seconds: Annotated[int, Meta(ge=0, le=86_400)] | None = None


@transaction.atomic
def offer_create(
    *,
    organization: Organization,
    node_id: int,
    gpu_model: str,
    gpu_count: int,
    price_per_gpu_hour_micros: int,
    kind: str,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    min_lease_seconds: int = 3600,
    max_lease_seconds: int | None = None,
    preemption_grace_seconds: int | None = None,
) -> Offer:
    """List capacity on one node. Validation errors are 400s naming the field."""
    given = validated(
        OfferInput,
        {
            "node_id": node_id,
            "gpu_model": gpu_model,
            "gpu_count": gpu_count,
            "price_per_gpu_hour_micros": price_per_gpu_hour_micros,
            "kind": kind,
            "window_start": window_start,
            "window_end": window_end,
            "min_lease_seconds": min_lease_seconds,
            "max_lease_seconds": max_lease_seconds,
            "preemption_grace_seconds": preemption_grace_seconds,
        },
    )
    now = timezone.now()
    window_start, window_end = given.window_start or now, given.window_end
    gpu_model, gpu_count, kind = given.gpu_model, given.gpu_count, given.kind
    min_lease_seconds, max_lease_seconds = given.min_lease_seconds, given.max_lease_seconds
    grace = given.preemption_grace_seconds
    node = (
        Node.objects.select_for_update().filter(organization=organization, pk=given.node_id).first()
    )
    if node is None:
        raise NotFound(
            f"node {given.node_id} not found", details={"fields": {"node_id": ["not found"]}}
        )
    # The rules between fields:
    if window_end is not None and window_end <= window_start:
        raise field_error("window_end", "must be after window_start")
    if window_end is not None and window_end <= now:
        raise field_error("window_end", "is in the past")
    if max_lease_seconds is not None and max_lease_seconds < min_lease_seconds:
        raise field_error("max_lease_seconds", "must be at least min_lease_seconds")
    if window_end is not None and (window_end - window_start).total_seconds() < min_lease_seconds:
        raise field_error("min_lease_seconds", "is longer than the availability window")
    interruptible = kind == Offer.Kind.INTERRUPTIBLE
    if interruptible and grace is None:
        raise field_error(
            "preemption_grace_seconds", "is required for interruptible offers (seconds of notice)"
        )
    if not interruptible and grace is not None:
        raise field_error("preemption_grace_seconds", "applies only to interruptible offers")
    # ... and against the catalog and the node:
    model = catalog.model_get(gpu_model)
    if model is None:
        raise field_error("gpu_model", f"unknown GPU model {gpu_model!r}; see /gpu-models")
    on_node = node.gpus.filter(present=True, model=gpu_model).count()
    if on_node == 0:
        raise field_error("gpu_model", f"node {node.hostname} has no {model.name} GPUs")
    if gpu_count > on_node:
        raise field_error(
            "gpu_count", f"node {node.hostname} has {on_node} {model.name} GPUs, not {gpu_count}"
        )
    if node.site is None:
        raise field_error(
            "node_id", f"node {node.hostname} has no site, so no region: register it with --site"
        )
    # The node row is locked above, so two offers for the same node cannot both pass.
    overlapping = [
        other
        for other in Offer.objects.filter(node=node, gpu_model=gpu_model).exclude(
            status=Offer.Status.WITHDRAWN
        )
        if _overlaps(window_start, window_end, other.window_start, other.window_end)
    ]
    listed = sum(other.gpu_count for other in overlapping)
    if listed + gpu_count > on_node:
        raise field_error(
            "window_start",
            f"overlaps offers {', '.join(str(o.pk) for o in overlapping)} for the same GPUs: "
            f"together they would list {listed + gpu_count} of the node's {on_node} "
            f"{model.name} GPUs",
            conflicting_offer_ids=[o.pk for o in overlapping],
        )

    offer = Offer.objects.create(
        organization=organization,
        node=node,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        price_per_gpu_hour_micros=given.price_per_gpu_hour_micros,
        currency=settings.TANDEM_CURRENCY,
        window_start=window_start,
        window_end=window_end,
        min_lease_seconds=min_lease_seconds,
        max_lease_seconds=max_lease_seconds,
        kind=kind,
        preemption_grace_seconds=grace,
        region=node.site.region,
        created_at=now,
    )
    OfferActivePeriod.objects.create(offer=offer, started_at=now)
    _offer_event(
        offer,
        events.OfferListed(
            offer_id=offer.pk,
            organization_id=organization.pk,
            node_id=node.pk,
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            price_per_gpu_hour_micros=given.price_per_gpu_hour_micros,
            currency=offer.currency,
            window_start=window_start.isoformat(),
            window_end=_iso(window_end),
            min_lease_seconds=min_lease_seconds,
            max_lease_seconds=max_lease_seconds,
            kind=kind,
            preemption_grace_seconds=grace,
            region=offer.region,
            at=now.isoformat(),
        ),
    )
    return offer


def _offer_locked(*, offer: Offer) -> Offer:
    return Offer.objects.select_for_update().get(pk=offer.pk)


def _withdrawn_conflict(offer: Offer, action: str) -> Conflict:
    return Conflict(
        f"offer {offer.pk} is withdrawn: it cannot be {action}", details={"status": offer.status}
    )


@transaction.atomic
def offer_pause(*, offer: Offer) -> Offer:
    """Stop new leases on the offer; running leases go on. Pausing twice is a no-op."""
    offer = _offer_locked(offer=offer)
    if offer.status == Offer.Status.WITHDRAWN:
        raise _withdrawn_conflict(offer, "paused")
    if offer.status == Offer.Status.PAUSED:
        return offer
    now = timezone.now()
    offer.status = Offer.Status.PAUSED
    offer.save(update_fields=["status"])
    OfferActivePeriod.objects.filter(offer=offer, ended_at=None).update(ended_at=now)
    _offer_event(
        offer,
        events.OfferPaused(
            offer_id=offer.pk, organization_id=offer.organization_id, at=now.isoformat()
        ),
    )
    return offer


@transaction.atomic
def offer_resume(*, offer: Offer) -> Offer:
    offer = _offer_locked(offer=offer)
    if offer.status == Offer.Status.WITHDRAWN:
        raise _withdrawn_conflict(offer, "resumed")
    if offer.status == Offer.Status.ACTIVE:
        return offer
    now = timezone.now()
    offer.status = Offer.Status.ACTIVE
    offer.save(update_fields=["status"])
    OfferActivePeriod.objects.create(offer=offer, started_at=now)
    _offer_event(
        offer,
        events.OfferResumed(
            offer_id=offer.pk, organization_id=offer.organization_id, at=now.isoformat()
        ),
    )
    return offer


@transaction.atomic
def offer_reprice(*, offer: Offer, price_per_gpu_hour_micros: int) -> Offer:
    """A new price for new leases; running leases keep theirs."""
    if price_per_gpu_hour_micros <= 0:
        raise field_error("price_per_gpu_hour_micros", "must be a positive number of micro-units")
    offer = _offer_locked(offer=offer)
    if offer.status == Offer.Status.WITHDRAWN:
        raise _withdrawn_conflict(offer, "repriced")
    previous = offer.price_per_gpu_hour_micros
    if previous == price_per_gpu_hour_micros:
        return offer
    now = timezone.now()
    offer.price_per_gpu_hour_micros = price_per_gpu_hour_micros
    offer.save(update_fields=["price_per_gpu_hour_micros"])
    _offer_event(
        offer,
        events.OfferRepriced(
            offer_id=offer.pk,
            organization_id=offer.organization_id,
            previous_price_per_gpu_hour_micros=previous,
            price_per_gpu_hour_micros=price_per_gpu_hour_micros,
            currency=offer.currency,
            applies_to="new_leases",
            at=now.isoformat(),
        ),
    )
    return offer


@transaction.atomic
def offer_withdraw(*, offer: Offer, force: bool = False) -> Offer:
    """Take the offer off the market. Running leases run to the end of their window;
    with ``force`` they end now and the event carries that moment (``forced_end_at``),
    past which buyers are not billed. Forcing an offer already withdrawn without force
    is allowed (one more event); anything else repeated is a no-op."""
    offer = _offer_locked(offer=offer)
    if offer.status == Offer.Status.WITHDRAWN and (offer.forced_end_at or not force):
        return offer
    now = timezone.now()
    if offer.status != Offer.Status.WITHDRAWN:
        offer.withdrawn_at = now
    offer.status = Offer.Status.WITHDRAWN
    if force:
        offer.forced_end_at = now
    offer.save(update_fields=["status", "withdrawn_at", "forced_end_at"])
    OfferActivePeriod.objects.filter(offer=offer, ended_at=None).update(ended_at=now)
    _offer_event(
        offer,
        events.OfferWithdrawn(
            offer_id=offer.pk,
            organization_id=offer.organization_id,
            forced=force,
            forced_end_at=_iso(offer.forced_end_at) if force else None,
            at=now.isoformat(),
        ),
    )
    return offer
