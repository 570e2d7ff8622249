"""The buyer's runs on a raw lease: queueing a command, cancelling it, and stopping
every live run of a lease that ended."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from core.db import retry_transaction
from core.errors import Conflict, NotFound
from marketplace.assignments import events, specs
from marketplace.assignments.common import _append, _index_bump
from marketplace.assignments.models import (
    Assignment,
)
from marketplace.assignments.run_ends import _stop
from marketplace.models import Lease

MAX_LIVE_RUNS_PER_LEASE = 16


@retry_transaction
def run_create(
    *,
    organization: Any,
    lease_id: int,
    command: list[str],
    env: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
    now: datetime | None = None,
) -> Assignment:
    """Queue a buyer's command on one of its active raw leases, for that lease's node."""
    spec = specs.command_spec_check(command=command, env=env or {}, files=files or {})
    now = now or timezone.now()
    # The lease's row lock orders this with the lease's end (which stops its runs).
    lease = Lease.objects.select_for_update().filter(organization=organization, pk=lease_id).first()
    if lease is None:
        raise NotFound(f"lease {lease_id} not found")
    if lease.managed:
        raise Conflict(
            f"lease {lease_id} runs a workload Tandem manages (a fine-tune or an inference "
            "deployment); commands run on raw leases only",
            details={"lease": lease_id, "reason": "not_raw"},
        )
    if lease.state != Lease.State.ACTIVE:
        raise Conflict(
            f"lease {lease_id} is {lease.state}; commands run on active leases only",
            details={"lease": lease_id, "reason": f"lease_{lease.state}"},
        )
    live = Assignment.objects.filter(lease=lease, state__in=Assignment.LIVE_STATES).count()
    if live >= MAX_LIVE_RUNS_PER_LEASE:
        raise Conflict(
            f"lease {lease_id} has {live} runs queued or running (at most "
            f"{MAX_LIVE_RUNS_PER_LEASE}); wait for one to end or cancel one",
            details={"lease": lease_id, "reason": "too_many_runs"},
        )
    assignment = Assignment.objects.create(
        node_id=lease.node_id,
        lease=lease,
        organization_id=lease.organization_id,
        kind=Assignment.Kind.COMMAND,
        spec=spec.as_json(),
        created_at=now,
    )
    _append(
        assignment,
        events.AssignmentQueued(
            assignment_id=assignment.pk,
            kind=assignment.kind,
            lease_id=lease.pk,
            node_id=lease.node_id,
            organization_id=lease.organization_id,
            at=now.isoformat(),
        ),
    )
    _index_bump(lease.node_id)
    return assignment


@retry_transaction
def run_cancel(
    *, organization: Any, lease_id: int, run_id: int, now: datetime | None = None
) -> Assignment:
    """Cancel a buyer's run: at once if no node claimed it yet, else its node is told to
    stop at its next renewal or blocking query (within about a second)."""
    now = now or timezone.now()
    assignment = (
        Assignment.objects.select_for_update()
        .filter(organization=organization, lease_id=lease_id, pk=run_id)
        .first()
    )
    if assignment is None:
        raise NotFound(f"run {run_id} of lease {lease_id} not found")
    if not assignment.is_live:
        raise Conflict(
            f"run {run_id} already ended ({assignment.state})",
            details={"run": run_id, "state": assignment.state},
        )
    if _stop(assignment, reason="cancelled by the buyer", now=now):
        _index_bump(assignment.node_id)
    return assignment


def assignments_stop_for_lease(*, lease_id: int, reason: str, now: datetime | None = None) -> int:
    """Tell every live assignment of a lease that ended to stop (in the transaction that
    ends the lease, so its node learns it at its next query). Returns how many.

    Lock order: a node's report locks its assignment's row and then, when the run's
    state changes, the event store's append lock. Called before the lease's own events
    are appended, this locks the rows first too. A transaction that ends several
    leases (an order's cancel, a gang) has appended events by its second lease, so a
    report racing it can deadlock with it; PostgreSQL detects that, and both sides
    run in ``retry_transaction``, so the loser runs again."""
    now = now or timezone.now()
    stopped = 0
    node_ids: set[int] = set()
    live = Assignment.objects.select_for_update().filter(
        lease_id=lease_id, state__in=Assignment.LIVE_STATES
    )
    for assignment in live.order_by("pk"):
        if _stop(assignment, reason=reason, now=now):
            stopped += 1
            node_ids.add(assignment.node_id)
    for node_id in sorted(node_ids):
        _index_bump(node_id)
    return stopped
