"""A lease's bound: the GPU-seconds stored for a lease may not exceed its GPU count
times its live seconds up to the latest of them (the rule and its locking below)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import connection
from django.db.models import Max, Sum

from core.db import is_postgres
from core.ports import LeaseFacts
from metering.models import UsageEvent
from metering.schema import UsageEventIn

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
