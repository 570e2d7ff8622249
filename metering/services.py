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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import repeat
from operator import attrgetter

import msgspec
from django.db import connection, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from core import ports
from core.db import is_postgres, retry_transaction, server_cursor
from core.errors import InvalidInput
from core.eventstore import EventRow, events_insert
from core.models import Organization
from core.ports import LeaseFacts, UsageProvenancePort, WorkloadFacts
from core.tenancy import Caller
from metering import events as ev
from metering.models import PLATFORM_PRODUCER, ClosedPeriod, UsageEvent
from metering.schema import Rejection, UsageEventIn, event_validate, subject_of

MAX_FUTURE = timedelta(minutes=5)
USAGE_TABLE = UsageEvent._meta.db_table
_BUYER_KINDS: tuple[str | None, ...] = (Organization.Kind.BUYER, Organization.Kind.BOTH)
_encode = msgspec.json.encode


# --- who may send -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sender:
    """Who is sending usage, and for whom they may. Whatever the sender, every
    event's subject must exist and be the subject buyer's (``_proven``).

    - the platform's own producers (the runtime and the inference gateway, through
      ``usage_record`` and the ``usage`` port): tokens of jobs and deployments,
      GPU-seconds of leases;
    - a key of the operator organization (the platform's own integrations, run as
      another process): the same;
    - a key of a provider organization (its agents): ``gpu.seconds`` of its own
      leases only (a lease on one of its nodes; with ``node_id``, the agent key's
      node, on that node). Token usage is counted by the platform that ran the work,
      never taken from a provider;
    - a key of a buyer organization: nothing (its usage is what the platform and its
      providers measured, not what it says).
    """

    producer_org_id: int  # PLATFORM_PRODUCER (0) for internal producers
    own_org_id: int | None = None  # buyers: the only subject org allowed
    provider_org_id: int | None = None  # providers: the only provider they may bill for
    trusted: bool = False
    # An agent key bound to one node: only leases on that node (None: any node of
    # ``provider_org_id``).
    node_id: int | None = None

    @classmethod
    def platform(cls) -> Sender:
        return cls(producer_org_id=PLATFORM_PRODUCER, trusted=True)

    @classmethod
    def for_caller(cls, caller: Caller) -> Sender:
        org = caller.organization
        if org.is_operator:
            return cls(producer_org_id=org.pk, trusted=True)
        if org.is_provider:
            # An agent key bound to one node names it (None: a key of the whole org).
            return cls(
                producer_org_id=org.pk,
                provider_org_id=org.pk,
                node_id=getattr(caller, "agent_node_id", None),
            )
        return cls(producer_org_id=org.pk, own_org_id=org.pk)

    def refusal(self, event: UsageEventIn) -> str | None:
        if self.trusted:
            return None
        if self.own_org_id is not None:
            if event.subject.org != self.own_org_id:
                return "a buyer key may only send usage of its own organization"
            if event.type == "gpu.seconds":
                return "gpu.seconds are reported by the provider serving the lease"
            return (
                f"{event.type} of a job or deployment is counted by the platform that ran "
                "it, not sent with a buyer key"
            )
        if event.type != "gpu.seconds":
            return (
                f"{event.type} of a job or deployment is counted by the platform that ran "
                "it; a provider key reports only gpu.seconds of its own leases"
            )
        return None


# --- answers ----------------------------------------------------------------


class Outcome(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event's answer, as the batch endpoint writes it (empty fields left out)."""

    index: int  # the event's place in its batch
    id: str | None
    status: str  # accepted | duplicate | rejected
    code: str = ""
    reason: str = ""
    note: str = ""


def _rejected(index: int, rejection: Rejection) -> Outcome:
    return Outcome(index, rejection.id, "rejected", rejection.code, rejection.reason)


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


def next_month(period: date) -> date:
    return date(period.year + period.month // 12, period.month % 12 + 1, 1)


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


_time = attrgetter("time")
_id = attrgetter("id")
_key = attrgetter("source", "id")
_org = attrgetter("subject.org")


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


_LEASE_DIMENSIONS = (
    ("gpu_model", "gpu_model"),
    ("provider", "provider_organization_id"),
    ("lease_price_micros_per_hour", "price_micros_per_hour"),
)


def _provenance() -> UsageProvenancePort:
    return ports.get(ports.UsageProvenancePort)


def _proven(
    sender: Sender,
    indices: Sequence[int],
    events: list[UsageEventIn],
    outcomes: list[Outcome | None],
    bounded: dict[str, LeaseFacts],
) -> tuple[list[int], list[UsageEventIn]]:
    """The events whose subject the platform's records prove; the others are
    answered ``rejected``. One query for the batch's buyer organizations, and one
    per subject kind (leases, jobs, deployments) through the ``usage_provenance``
    port:

    - the subject org is a buyer organization;
    - ``gpu.seconds``: the lease exists and is that buyer's; from a provider key, it
      runs on one of the sender's nodes (on the agent key's node, when bound to
      one); the event's time lies in the lease's live interval [started, ended] (a
      lease still running: up to the future limit); ``gpu_model``, ``provider`` and
      ``lease_price_micros_per_hour`` are the lease's — one sent that differs is
      refused, one left out is filled in. The price billed is never the client's;
    - ``tokens.*``: the job exists and is that buyer's, or the deployment does and
      is that buyer's or a platform deployment (base models, serving every buyer).

    An unknown subject and another buyer's (or another provider's) are answered the
    same ``unknown_subject``, so a sender learns nothing of subjects not its own. The
    facts of the leases whose GPU-seconds pass go into ``bounded`` (by subject id),
    for their bound, checked as they are stored (``_leases_within_bounds``)."""
    buyer_ids = set(map(_org, events))
    kinds: dict[int, str] = dict(
        Organization.objects.filter(pk__in=buyer_ids).values_list("pk", "kind")
    )
    lease_ids: list[str] = []
    job_ids: list[str] = []
    deployment_ids: list[str] = []
    for event in events:
        subject = event.subject
        if subject.lease is not None:
            lease_ids.append(subject.lease)
        elif subject.job is not None:
            job_ids.append(subject.job)
        elif subject.deployment is not None:
            deployment_ids.append(subject.deployment)
    provenance = _provenance()
    leases = provenance.leases(subject_ids=lease_ids) if lease_ids else {}
    workloads = (
        provenance.workloads(job_ids=job_ids, deployment_ids=deployment_ids)
        if job_ids or deployment_ids
        else {}
    )
    proven: tuple[list[int], list[UsageEventIn]] = ([], [])
    for index, event in zip(indices, events, strict=True):
        org = event.subject.org
        if kinds.get(org) not in _BUYER_KINDS:
            outcomes[index] = Outcome(
                index,
                event.id,
                "rejected",
                "unknown_subject",
                f"subject.org {org} is not a buyer organization",
            )
            continue
        lease_id = event.subject.lease
        if lease_id is not None:
            lease = leases.get(lease_id)
            lease_refusal = _lease_refusal(sender, event, lease_id, lease)
            if lease_refusal is not None:
                outcomes[index] = Outcome(index, event.id, "rejected", *lease_refusal)
                continue
            event = _priced_by(event, lease)  # type: ignore[arg-type]  # proven above
            bounded[lease_id] = lease  # type: ignore[assignment]
        else:
            refusal = _workload_refusal(event, workloads)
            if refusal is not None:
                outcomes[index] = Outcome(index, event.id, "rejected", "unknown_subject", refusal)
                continue
        proven[0].append(index)
        proven[1].append(event)
    return proven


def _lease_refusal(
    sender: Sender, event: UsageEventIn, lease_id: str, lease: LeaseFacts | None
) -> tuple[str, str] | None:
    """Why a lease's GPU-seconds are refused (code, reason), or None."""
    org = event.subject.org
    mine = sender.provider_org_id
    if (
        lease is None
        or lease.organization_id != org
        or (mine is not None and lease.provider_organization_id != mine)
    ):
        served = f" served by organization {mine}" if mine is not None else ""
        return (
            "unknown_subject",
            f"subject.lease {lease_id!r} is not a lease of organization {org}{served}",
        )
    if sender.node_id is not None and lease.node_id != sender.node_id:
        return (
            "forbidden",
            f"subject.lease {lease_id!r} runs on node {lease.node_id}, not on node "
            f"{sender.node_id} of this agent key",
        )
    dims = event.dimensions
    for name, attribute in _LEASE_DIMENSIONS:
        if name in dims and dims[name] != getattr(lease, attribute):
            return (
                "invalid",
                f"dimensions.{name} {dims[name]!r} does not match lease {lease_id}'s "
                f"{getattr(lease, attribute)!r}",
            )
    if lease.started_at is None:
        return ("invalid", f"subject.lease {lease_id!r} has not started")
    if event.time < lease.started_at or (
        lease.ended_at is not None and event.time > lease.ended_at
    ):
        ended = lease.ended_at.isoformat() if lease.ended_at is not None else "now"
        return (
            "invalid",
            f"time {event.time.isoformat()} is outside lease {lease_id}'s live interval "
            f"[{lease.started_at.isoformat()}, {ended}]",
        )
    return None


def _priced_by(event: UsageEventIn, lease: LeaseFacts) -> UsageEventIn:
    """The event with the lease's own gpu_model, provider and price as dimensions."""
    dims = event.dimensions
    if (
        dims.get("lease_price_micros_per_hour") == lease.price_micros_per_hour
        and dims.get("provider") == lease.provider_organization_id
        and dims.get("gpu_model") == lease.gpu_model
    ):
        return event
    return msgspec.structs.replace(
        event,
        dimensions={
            **dims,
            "gpu_model": lease.gpu_model,
            "provider": lease.provider_organization_id,
            "lease_price_micros_per_hour": lease.price_micros_per_hour,
        },
    )


def _workload_refusal(
    event: UsageEventIn, workloads: dict[tuple[str, str], WorkloadFacts]
) -> str | None:
    """Why tokens of a job or deployment are refused, or None."""
    org = event.subject.org
    job = event.subject.job
    if job is not None:
        found = workloads.get(("job", job))
        if found is None or found.organization_id != org:
            return f"subject.job {job!r} is not a fine-tune job of organization {org}"
        return None
    deployment = event.subject.deployment
    found = workloads.get(("deployment", deployment))  # type: ignore[arg-type]
    if found is None or found.organization_id not in (org, None):
        return f"subject.deployment {deployment!r} is not a deployment serving organization {org}"
    return None


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


# --- a lease's bound -------------------------------------------------------------
#
# A provider reports its own lease's GPU-seconds, and could report more than its GPUs
# ran. What a lease is billed is bounded: after each batch, the GPU-seconds stored for
# a lease may not exceed ``gpu_count`` x its live seconds up to the latest of their
# times (capped by the lease's end and by now: an event up to 5 minutes ahead adds
# nothing). An event's time is when its seconds had been used, so a batch that
# reports more than the GPUs could have run by then is refused, event by event, in
# its order (``exceeds_lease``, naming the quantity and the bound); the rest is stored.
#
# How, in the transaction that stores the batch: rows first (the insert, the bulk of
# the work, runs concurrently with other batches), then a transaction-scoped advisory
# lock per lease named, taken in lease id order, then one aggregate over the leases'
# rows (an index of lease rows alone: usage_lease_gpu_seconds), which sees this
# batch's rows and every batch that held the locks before; then the UsageRecorded
# append, and commit, which releases the locks. Two concurrent batches for one lease
# are thus checked one after the other, each seeing the other's rows. The locks are
# held only from the aggregate to the commit. When a lease is over, the transaction
# is rolled back and run again without the events refused (``_OverBound``), so
# nothing refused is ever written (the usage table is append-only) and UsageRecorded
# names only what was kept.
#
# Why advisory locks rather than ``SELECT … FOR UPDATE`` of the lease rows: the leases
# are marketplace's rows, which metering reads through the ``usage_provenance`` port
# and may not lock or write; a row lock there would also make the lease's own
# lifecycle (renewals, settlement, its end) wait for usage batches, and batches wait
# for them. The advisory lock serializes only what needs it (two batches bounding the
# same lease), in metering's own key space (class ``_BOUND_LOCK``, the lease id as the
# object: two leases sharing a key past 2**31 only wait for each other). Ingests take
# lease locks before the event store's append lock, always in that order. Batches
# without GPU-seconds take none. On SQLite (one writer at a time) the insert already
# serializes the batches: no lock is needed.

_BOUND_LOCK = 0x7573_6167  # advisory lock class of a lease's bound ("usag")


class _OverBound(Exception):
    """Events refused for their lease's bound: {(source, id): reason}."""

    def __init__(self, refused: dict[tuple[str, str], str]) -> None:
        super().__init__(f"{len(refused)} events over their lease's bound")
        self.refused = refused


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


def _bound(lease: LeaseFacts, latest: datetime, now: datetime) -> tuple[int, datetime]:
    """GPU-seconds ``lease`` may have been billed by ``latest`` (capped by its end
    and by now), and that time."""
    until = min(latest, now)
    if lease.ended_at is not None:
        until = min(until, lease.ended_at)
    started = lease.started_at or until  # proven started in _lease_refusal
    return lease.gpu_count * max(0, int((until - started).total_seconds())), until


def _gpu_seconds_so_far(
    subject_ids: Sequence[str], *, excluding: Sequence[int] = ()
) -> dict[str, tuple[int, datetime]]:
    """{lease subject: (GPU-seconds stored, latest time)} for the leases that have any."""
    rows = UsageEvent.objects.filter(subject_kind="lease", subject_id__in=subject_ids)
    if excluding:
        rows = rows.exclude(id__in=excluding)
    return {
        subject: (total, latest)
        for subject, total, latest in rows.values_list("subject_id")
        .order_by()
        .annotate(total=Sum("quantity"), latest=Max("occurred_at"))
    }


def _leases_within_bounds(
    rows: list[UsageEventIn],
    ids: list[int],
    inserted: set[tuple[str, str]] | None,
    leases: dict[str, LeaseFacts],
    now: datetime,
) -> None:
    """Raise ``_OverBound`` naming this batch's events that take a lease past its
    bound; called in the storing transaction after the insert (see above)."""
    named = sorted(
        {e.subject.lease for e in rows if e.subject.lease is not None},  # type: ignore[misc]
        key=lambda subject: int(subject.rpartition("-")[2]),
    )
    if not named or not ids:
        return
    if is_postgres():
        with connection.cursor() as cursor:
            for subject in named:
                pk = int(subject.rpartition("-")[2])
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_BOUND_LOCK, pk % 2**31])
    so_far = _gpu_seconds_so_far(named)
    over = [
        subject
        for subject, (total, latest) in so_far.items()
        if total > _bound(leases[subject], latest, now)[0]
    ]
    if not over:  # the usual case: one aggregate
        return
    # Which of this batch's events to refuse: in its order, from what the others
    # stored, each event while it keeps its lease within the bound.
    others = _gpu_seconds_so_far(over, excluding=ids)
    refused: dict[tuple[str, str], str] = {}
    for subject in over:
        lease = leases[subject]
        # A proven lease has started; ``now`` only satisfies the type.
        used, latest = others.get(subject, (0, lease.started_at or now))
        for event in rows:
            key = (event.source, event.id)
            if event.subject.lease != subject or (inserted is not None and key not in inserted):
                continue
            at = max(latest, event.time)
            bound, until = _bound(lease, at, now)
            if used + event.quantity > bound:
                refused[key] = (
                    f"quantity {event.quantity} would bring lease {subject}'s gpu.seconds to "
                    f"{used + event.quantity}, over its bound of {bound} ({lease.gpu_count} "
                    f"GPUs x {bound // max(1, lease.gpu_count)} live seconds from "
                    f"{lease.started_at.isoformat()} to {until.isoformat()})"  # type: ignore[union-attr]
                )
                continue
            used += event.quantity
            latest = at
    raise _OverBound(refused)


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


# --- periods ----------------------------------------------------------------


def _period_closing(period: date) -> None:
    """Check ``period`` names a month and wait for ingests in flight (``SHARE`` lock on
    the usage table), so none of them lands in a month after it is closed."""
    if period.day != 1:
        raise InvalidInput(
            "a period is named by the first day of its month", details={"field": "period"}
        )
    if is_postgres():
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {USAGE_TABLE} IN SHARE MODE")


@transaction.atomic
def usage_period_close(*, organization: Organization, period: date) -> ClosedPeriod:
    """Close a buyer's month: later usage for it counts in the next open month.
    Waits for ingests in flight (``SHARE`` lock on the usage table) so none of them
    lands in the month after it is closed. Closing twice returns the first closing."""
    _period_closing(period)
    closed, _ = ClosedPeriod.objects.get_or_create(
        organization=organization, period=period, defaults={"closed_at": timezone.now()}
    )
    return closed


@transaction.atomic
def usage_periods_close(
    *, organization_ids: Sequence[int], period: date, now: datetime | None = None
) -> int:
    """``usage_period_close`` for many buyers at once (a month's close): one lock, one
    insert. Months closed already keep their first closing. Returns how many closed now."""
    now = now or timezone.now()
    _period_closing(period)
    ids = sorted(set(organization_ids))
    if is_postgres():
        # One statement for a month's buyers (ten thousand model instances and
        # their IN lists cost a close a tenth of a second).
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {ClosedPeriod._meta.db_table} (organization_id, period, closed_at) "
                "SELECT unnest(%s::bigint[]), %s, %s "
                "ON CONFLICT (organization_id, period) DO NOTHING",
                ["{" + ",".join(map(str, ids)) + "}", period, now],
            )
            return cursor.rowcount
    closed: set[int] = set()
    for offset in range(0, len(ids), 5000):
        closed.update(
            ClosedPeriod.objects.filter(
                organization_id__in=ids[offset : offset + 5000], period=period
            ).values_list("organization_id", flat=True)
        )
    ClosedPeriod.objects.bulk_create(
        [
            ClosedPeriod(organization_id=org_id, period=period, closed_at=now)
            for org_id in ids
            if org_id not in closed
        ],
        ignore_conflicts=True,
    )
    return len(ids) - len(closed)
