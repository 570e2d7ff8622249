"""Every write of assignments: the buyer's runs on a raw lease, and the node protocol.

The protocol (the agent's side is providers/agent_runs.py)
-----------------------------------------------------------

The server owns the desired state; the node pulls it, over outbound HTTP only, so a
node behind NAT works.

1. **Blocking query.** ``GET /api/v1/agent/nodes/{id}/assignments?index=N&wait=25``
   answers the node's live assignments and the node's index as soon as the index
   differs from N, else an empty answer at the timeout. Every change the agent must
   see (a new assignment, a claim, a start, an end, a stop request) moves the node's
   index in the transaction that makes it (``NodeAssignmentIndex``).
2. **Claim.** ``POST …/assignments/{aid}/claim`` is a conditional update from
   ``queued``: one claim wins, the next gets 409. It answers the **attempt** (the
   fencing token), the spec, the lease's GPU UUIDs and ``locked_until``. A gang
   member's claim is a barrier (gangs.py): it answers ``wait`` until every member
   has claimed, and the holder re-posts it with its attempt until the rendezvous
   comes.
3. **Events and renewals.** ``POST …/runs/{aid}/events`` carries a batch (started, log
   lines, finished, failed) with its attempt and batch number. Every post renews the
   claim (``locked_until = now + TTL``), and the answer says whether to stop (the run
   was cancelled, or its lease ended). A post from another attempt, or after the run
   ended, is a 409 that changes nothing: the agent kills the work and wipes its
   directory. A batch number the server has already applied is acknowledged without
   applying it again, so an agent may retry a post whose answer it lost.
4. **Reaper.** ``assignments_reap`` (each pass of ``run_matching``) ends every claim
   past ``locked_until``: its node stopped renewing. A command run ends ``failed``
   and is **not retried**: a buyer's command may have effects outside its work
   directory (uploads, writes to the buyer's own services), so running it a second
   time is not ours to decide. Training is re-queued from its checkpoint instead.

Kinds: ``command`` (a buyer's command on a raw lease) and ``train`` (a fine-tune's
training: marketplace/assignments/training.py adds signed URLs to its claim, its own
reports, uploads, and its re-queueing by the reaper) and ``serve`` (an inference
deployment's engine: marketplace/assignments/serving.py; long-lived, renewed while
the deployment lives, its requests relayed to it). The index,
claim, attempt, renewals and stop are the same for every kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, Q
from django.utils import timezone

from core.db import is_postgres, retry_transaction
from core.errors import Conflict, NotFound
from core.eventstore import DomainEvent, event_append, stream_version
from core.validation import field_error
from marketplace.assignments import events, gangs, specs, training
from marketplace.assignments.models import (
    Assignment,
    AssignmentLogLine,
    NodeAssignmentIndex,
    notify_channel,
)
from marketplace.models import Lease, LeaseGpu

MAX_LIVE_RUNS_PER_LEASE = 16
MAX_EVENTS_PER_BATCH = 1000
MAX_LOG_LINE_CHARS = 4096
MAX_LOG_LINES_PER_RUN = 50_000
MAX_LOG_BYTES_PER_RUN = 16 * 1024 * 1024
MAX_REASON_CHARS = 500
# Kinds whose assignment, never claimed within two TTLs, fails its lease (the node
# has no agent): the platform's managed work, which can run elsewhere.
UNCLAIMED_REAPED = ("train", "serve")
# A train run's own events (see marketplace/assignments/training.py).
TRAIN_EVENTS = frozenset({"training_started", "step", "evaluation"})


def claim_ttl() -> timedelta:
    return timedelta(seconds=settings.ASSIGNMENT_CLAIM_TTL_SECONDS)


class StaleAttempt(Conflict):
    """A node reported for an attempt that is not the assignment's current one, or
    for a run that already ended. Nothing was changed; the node must stop the work."""

    code = "stale_attempt"


# --- helpers ------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _append(assignment: Assignment, *items: DomainEvent) -> None:
    # Callers hold the assignment's row lock (or just created it): the version is stable.
    stream_id = f"assignment-{assignment.pk}"
    event_append(
        stream_type=events.ASSIGNMENT_STREAM,
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[item.to_new_event() for item in items],
        tenant_id=assignment.organization_id,
    )


def _index_bump(node_id: int) -> None:
    """Move the node's index: its agent's blocking query answers. In the caller's
    transaction, so the agent never sees the index move before the change commits.
    On PostgreSQL a NOTIFY (delivered at commit) wakes waiting queries at once."""
    if not NodeAssignmentIndex.objects.filter(node_id=node_id).update(index=F("index") + 1):
        NodeAssignmentIndex.objects.get_or_create(node_id=node_id)
        NodeAssignmentIndex.objects.filter(node_id=node_id).update(index=F("index") + 1)
    if is_postgres():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [notify_channel(node_id)])


# --- the buyer's runs ---------------------------------------------------------------


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


def _end(
    assignment: Assignment,
    *,
    state: str,
    now: datetime,
    exit_code: int | None = None,
    reason: str = "",
    lost: bool = False,
) -> None:
    """Record the end of a live assignment (the caller holds its row lock). A train
    run's end goes to the runtime's record too (``lost``: its node stopped renewing)."""
    if assignment.kind == Assignment.Kind.TRAIN:
        state, reason = training.train_end_state(assignment, state, reason)
    assignment.state = state
    assignment.finished_at = now
    assignment.locked_until = None
    assignment.exit_code = exit_code
    assignment.lost = lost
    if reason:
        assignment.failure_reason = reason[:MAX_REASON_CHARS]
    _append(
        assignment,
        events.AssignmentEnded(
            assignment_id=assignment.pk,
            attempt=assignment.attempt,
            state=state,
            exit_code=exit_code,
            reason=reason[:MAX_REASON_CHARS],
            at=now.isoformat(),
        ),
    )
    if assignment.kind == Assignment.Kind.TRAIN:
        training.train_ended(assignment, state=state, reason=reason, lost=lost)


def _stop(assignment: Assignment, *, reason: str, now: datetime) -> bool:
    """Stop a live assignment: one never claimed ends ``cancelled`` at once; a claimed
    one is asked to stop (its node kills it and reports the end). False when it was
    not live or already asked. The caller holds its row lock and bumps the index."""
    if assignment.state == Assignment.State.QUEUED:
        assignment.stop_requested = True
        assignment.stop_reason = reason[:200]
        _end(assignment, state=Assignment.State.CANCELLED, now=now, reason=reason)
        assignment.save()
        return True
    if assignment.state in Assignment.CLAIMED_STATES and not assignment.stop_requested:
        assignment.stop_requested = True
        assignment.stop_reason = reason[:200]
        assignment.save(update_fields=["stop_requested", "stop_reason"])
        _append(
            assignment,
            events.AssignmentStopRequested(
                assignment_id=assignment.pk, reason=reason[:200], at=now.isoformat()
            ),
        )
        return True
    return False


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


# --- the node's side ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    assignment: Assignment
    gpu_uuids: list[str]
    ttl_seconds: int
    # A gang member: None while the barrier waits for the other members' claims.
    rendezvous: dict[str, Any] | None = None

    @property
    def wait(self) -> bool:
        return bool(self.assignment.gang) and self.rendezvous is None


ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):(\d{1,5})$")


def _endpoint_check(endpoint: str) -> str:
    match = ENDPOINT.match(endpoint)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise field_error("endpoint", "must be host:port (an address the gang's nodes reach)")
    return endpoint


def _node_assignment_locked(node_id: int, assignment_id: int) -> Assignment:
    """The node's assignment under its row lock (a gang member: its gang's rows)."""
    return gangs.locked(node_id, assignment_id)


def assignment_claim(
    *,
    node_id: int,
    assignment_id: int,
    attempt: int | None = None,
    endpoint: str = "",
    now: datetime | None = None,
) -> Claim:
    """Claim a queued assignment of this node: its attempt goes up by one (the fencing
    token every report must carry) and it is locked for the claim TTL. 409 when it is
    not queued (claimed already, or ended), or its lease is no longer active (then it
    is cancelled, and that is committed before the 409).

    A gang member's claim names ``endpoint`` (``host:port`` for the rendezvous, which
    member 0's hosts) and is a barrier: the answer waits (``Claim.wait``) until every
    member has claimed. The holder re-posts it with its ``attempt``: that renews the
    claim and answers it again, with the rendezvous once the gang is complete. A
    re-post from another attempt is a 409 (stale_attempt)."""
    if endpoint:
        if attempt is not None:
            raise field_error("endpoint", "only the first claim names it")
        _endpoint_check(endpoint)
    outcome = _claim(node_id, assignment_id, attempt, endpoint, now or timezone.now())
    if isinstance(outcome, Conflict):
        raise outcome
    return outcome


def _gpu_uuids(lease_id: int) -> list[str]:
    return list(
        LeaseGpu.objects.filter(lease_id=lease_id)
        .order_by("gpu_uuid")
        .values_list("gpu_uuid", flat=True)
    )


def _claim_again(assignment: Assignment, attempt: int, now: datetime) -> Claim:
    """The holder's re-post of its claim (a gang member at the barrier): renewed."""
    if attempt != assignment.attempt or assignment.state not in Assignment.CLAIMED_STATES:
        raise StaleAttempt(
            f"assignment {assignment.pk}: attempt {attempt} is not current (the assignment "
            f"is {assignment.state} at attempt {assignment.attempt}); stop the work",
            details={
                "assignment": assignment.pk,
                "attempt": assignment.attempt,
                "state": assignment.state,
            },
        )
    ttl = claim_ttl()
    _live_lease_check(assignment, now)
    assignment.locked_until = now + ttl
    assignment.renewed_at = now
    assignment.save(update_fields=["locked_until", "renewed_at"])
    return Claim(
        assignment=assignment,
        gpu_uuids=_gpu_uuids(assignment.lease_id),
        ttl_seconds=int(ttl.total_seconds()),
        rendezvous=gangs.rendezvous(assignment) if assignment.gang else None,
    )


@retry_transaction
def _claim(
    node_id: int, assignment_id: int, attempt: int | None, endpoint: str, now: datetime
) -> Claim | Conflict:
    ttl = claim_ttl()
    assignment = _node_assignment_locked(node_id, assignment_id)
    if attempt is not None:
        return _claim_again(assignment, attempt, now)
    if assignment.state != Assignment.State.QUEUED:
        detail = (
            f"claimed by attempt {assignment.attempt} until {_iso(assignment.locked_until)}"
            if assignment.state in Assignment.CLAIMED_STATES
            else assignment.state
        )
        raise Conflict(
            f"assignment {assignment_id} is not waiting for a claim: {detail}",
            details={"assignment": assignment_id, "state": assignment.state},
        )
    if assignment.gang and assignment.gang_rank == 0 and not endpoint:
        raise field_error(
            "endpoint", "required: member 0 of a gang hosts its rendezvous at host:port"
        )
    lease = Lease.objects.get(pk=assignment.lease_id)
    if lease.state != Lease.State.ACTIVE:
        _stop(assignment, reason=f"lease {lease.pk} {lease.state}", now=now)
        _index_bump(node_id)
        return Conflict(
            f"assignment {assignment_id}: its lease {lease.pk} is {lease.state}",
            details={"assignment": assignment_id, "state": assignment.state},
        )
    gpu_uuids = _gpu_uuids(lease.pk)
    # The claim itself: a conditional update from the state and attempt just read.
    updated = Assignment.objects.filter(
        pk=assignment.pk, state=Assignment.State.QUEUED, attempt=assignment.attempt
    ).update(
        state=Assignment.State.CLAIMED,
        attempt=assignment.attempt + 1,
        claimed_at=now,
        renewed_at=now,
        locked_until=now + ttl,
        events_batch=0,
        endpoint=endpoint,
    )
    if updated != 1:  # cannot happen under the row lock; the update checks it anyway
        raise Conflict(f"assignment {assignment_id} was claimed meanwhile")
    assignment.refresh_from_db()
    _append(
        assignment,
        events.AssignmentClaimed(
            assignment_id=assignment.pk,
            node_id=node_id,
            attempt=assignment.attempt,
            locked_until=(now + ttl).isoformat(),
            at=now.isoformat(),
        ),
    )
    if assignment.kind == Assignment.Kind.TRAIN:
        training.train_claimed(assignment)
    _index_bump(node_id)
    return Claim(
        assignment=assignment,
        gpu_uuids=gpu_uuids,
        ttl_seconds=int(ttl.total_seconds()),
        rendezvous=gangs.rendezvous(assignment) if assignment.gang else None,
    )


@dataclass(frozen=True, slots=True)
class Report:
    assignment: Assignment
    stop: bool
    ttl_seconds: int
    applied: bool  # False: a batch the server had already applied (a retry)


def _live_lease_check(assignment: Assignment, now: datetime) -> bool:
    """Ask the run to stop when its lease is no longer active (the lease's end asks
    already; this covers a lease ended by any other path). True when newly asked."""
    state = Lease.objects.filter(pk=assignment.lease_id).values_list("state", flat=True).first()
    if state == Lease.State.ACTIVE:
        return False
    return _stop(assignment, reason=f"lease {assignment.lease_id} {state}", now=now)


@retry_transaction
def assignment_report(
    *,
    node_id: int,
    assignment_id: int,
    attempt: int,
    batch: int,
    items: list[dict[str, Any]],
    now: datetime | None = None,
) -> Report:
    """Apply a batch of a run's events from its node and renew its claim.

    ``items`` are checked dicts: ``{"type": "started"}``, ``{"type": "log", "stream":
    "stdout"|"stderr", "text": str}``, ``{"type": "finished", "exit_code": int}``,
    ``{"type": "failed", "reason": str}``; nothing may follow finished or failed.
    ``batch`` numbers a claim's posts from 1; one at or below the last applied is a
    retry: acknowledged (and renewed), not applied again."""
    now = now or timezone.now()
    ttl = claim_ttl()
    assignment = _node_assignment_locked(node_id, assignment_id)
    if attempt != assignment.attempt or assignment.state not in Assignment.CLAIMED_STATES:
        raise StaleAttempt(
            f"assignment {assignment_id}: attempt {attempt} is not current (the assignment "
            f"is {assignment.state} at attempt {assignment.attempt}); stop the work",
            details={
                "assignment": assignment_id,
                "attempt": assignment.attempt,
                "state": assignment.state,
            },
        )
    moved = _live_lease_check(assignment, now)
    applied = batch > assignment.events_batch
    if applied:
        requeue: list[Assignment] = []
        moved = _apply(assignment, items, now, requeue) or moved
        assignment.events_batch = batch
    else:
        requeue = []
    if assignment.state in Assignment.CLAIMED_STATES:
        assignment.locked_until = now + ttl
        assignment.renewed_at = now
    assignment.save()
    for given_back in requeue:
        training.train_lost(given_back, now=now)
    if moved:
        _index_bump(node_id)
    return Report(
        assignment=assignment,
        stop=assignment.stop_requested or not assignment.is_live,
        ttl_seconds=int(ttl.total_seconds()),
        applied=applied,
    )


def _apply(
    assignment: Assignment,
    items: list[dict[str, Any]],
    now: datetime,
    requeue: list[Assignment],
) -> bool:
    """Apply checked events in order; True when the state changed. A train run its
    node gave back (``failed`` with ``retry``) is added to ``requeue``."""
    moved = False
    lines: list[AssignmentLogLine] = []
    for position, item in enumerate(items):
        kind = item["type"]
        if not assignment.is_live:
            raise field_error(f"events[{position}]", f"nothing may follow the run's end ({kind})")
        if kind == "started":
            if assignment.state == Assignment.State.CLAIMED:
                assignment.state = Assignment.State.RUNNING
                assignment.started_at = now
                _append(
                    assignment,
                    events.AssignmentStarted(
                        assignment_id=assignment.pk, attempt=assignment.attempt, at=now.isoformat()
                    ),
                )
                moved = True
        elif kind == "log":
            text = item["text"][:MAX_LOG_LINE_CHARS]
            size = len(text.encode())
            if (
                assignment.log_lines >= MAX_LOG_LINES_PER_RUN
                or assignment.log_bytes + size > MAX_LOG_BYTES_PER_RUN
            ):
                assignment.log_lines_dropped += 1
                continue
            assignment.log_lines += 1
            assignment.log_bytes += size
            lines.append(
                AssignmentLogLine(
                    assignment_id=assignment.pk,
                    seq=assignment.log_lines,
                    attempt=assignment.attempt,
                    stream=item["stream"],
                    text=text,
                    received_at=now,
                )
            )
        elif kind in TRAIN_EVENTS:
            if assignment.kind != Assignment.Kind.TRAIN:
                raise field_error(f"events[{position}]", f"{kind} is for train runs only")
            if assignment.state == Assignment.State.CLAIMED:
                raise field_error(f"events[{position}]", f"{kind} before started")
            training.train_item_apply(assignment, item)
        elif kind == "finished":
            _lines_flush(lines)  # the run's last lines are read at its end
            code = int(item["exit_code"])
            if code == 0:
                state = Assignment.State.SUCCEEDED
            elif assignment.stop_requested:
                state = Assignment.State.CANCELLED
            else:
                state = Assignment.State.FAILED
            reason = assignment.stop_reason if state == Assignment.State.CANCELLED else ""
            if state == Assignment.State.FAILED:
                reason = f"exited with code {code}"
            _end(assignment, state=state, now=now, exit_code=code, reason=reason)
            moved = True
        elif kind == "failed":
            _lines_flush(lines)
            state = (
                Assignment.State.CANCELLED if assignment.stop_requested else Assignment.State.FAILED
            )
            # A train run its agent gave up for its own reasons (stopping, uploads
            # failing) goes to another node, as if the node had died.
            lost = (
                bool(item.get("retry"))
                and assignment.kind == Assignment.Kind.TRAIN
                and state == Assignment.State.FAILED
            )
            reason = item["reason"] or "failed on the node"
            _end(assignment, state=state, now=now, reason=reason, lost=lost)
            if lost:
                assignment.renewed_at = now
                requeue.append(assignment)
            moved = True
    _lines_flush(lines)
    return moved


def _lines_flush(lines: list[AssignmentLogLine]) -> None:
    if lines:
        AssignmentLogLine.objects.bulk_create(lines)
        lines.clear()


# --- the reaper ---------------------------------------------------------------------


@retry_transaction
def _reap_one(assignment_id: int, now: datetime) -> bool:
    assignment = (
        Assignment.objects.select_for_update()
        .filter(pk=assignment_id, state__in=Assignment.CLAIMED_STATES, locked_until__lt=now)
        .first()
    )
    if assignment is None:  # renewed or ended meanwhile
        return _reap_unclaimed(assignment_id, now)
    expired = assignment.locked_until
    train = assignment.kind == Assignment.Kind.TRAIN
    if assignment.stop_requested:
        state, reason = Assignment.State.CANCELLED, assignment.stop_reason
    else:
        state = Assignment.State.FAILED
        reason = (
            f"attempt {assignment.attempt} lost its claim: no report from node "
            f"{assignment.node_id} since before {_iso(expired)}"
            + (
                " (re-queued: the next node resumes from the last checkpoint)"
                if train
                else " (the deployment starts anew on its next request)"
                if assignment.kind == Assignment.Kind.SERVE
                else " (command runs are not retried)"
            )
        )
    _end(assignment, state=state, now=now, reason=reason, lost=train)
    assignment.save()
    if train or assignment.kind == Assignment.Kind.SERVE:
        # The dead node's lease fails at the last renewal (a deployment on it stops
        # with it) and the node is unhealthy until it heartbeats again.
        training.train_lost(assignment, now=now)
    _index_bump(assignment.node_id)
    return True


def _unclaimed(now: datetime) -> Q:
    """Train and serve runs queued too long: two TTLs; a gang member, the gang's
    barrier."""
    barrier = timedelta(seconds=settings.ASSIGNMENT_GANG_BARRIER_SECONDS)
    return Q(kind__in=UNCLAIMED_REAPED, state=Assignment.State.QUEUED) & (
        Q(gang="", created_at__lt=now - 2 * claim_ttl())
        | (~Q(gang="") & Q(created_at__lt=now - barrier))
    )


def _reap_unclaimed(assignment_id: int, now: datetime) -> bool:
    """A train or serve run that its node's agent never claimed within two TTLs (no
    agent runs there, or it is wedged), or a gang member not within the gang's
    barrier: its lease fails as if its node had died, so a fine-tune is re-queued
    elsewhere (a gang: released, its order matched again) and a deployment stopped
    (its next request starts one elsewhere)."""
    assignment = (
        Assignment.objects.select_for_update().filter(_unclaimed(now), pk=assignment_id).first()
    )
    if assignment is None:
        return False
    window = (
        settings.ASSIGNMENT_GANG_BARRIER_SECONDS
        if assignment.gang
        else int(2 * claim_ttl().total_seconds())
    )
    reason = f"node {assignment.node_id} did not claim it within {window} s " + (
        "(the gang's barrier: its members are released and the order matched again)"
        if assignment.gang
        else "(re-queued for another node)"
        if assignment.kind == Assignment.Kind.TRAIN
        else "(the deployment starts anew elsewhere)"
    )
    _end(assignment, state=Assignment.State.FAILED, now=now, reason=reason, lost=True)
    assignment.save()
    training.train_lost(assignment, now=now)
    _index_bump(assignment.node_id)
    return True


def assignments_reap(*, now: datetime | None = None) -> int:
    """End every claim past its ``locked_until``: its node stopped renewing (it died,
    or lost the network). Command runs end ``failed`` and are not retried (see the
    module doc); train runs are re-queued, and so is one its node never claimed
    within two TTLs; a serve run's lease fails (its deployment stops) in both cases.
    Cheap when there is nothing to do: two indexed reads."""
    now = now or timezone.now()
    due = list(
        Assignment.objects.filter(
            state__in=Assignment.CLAIMED_STATES, locked_until__lt=now
        ).values_list("pk", flat=True)[:500]
    )
    due += list(Assignment.objects.filter(_unclaimed(now)).values_list("pk", flat=True)[:500])
    return sum(1 for assignment_id in due if _reap_one(assignment_id, now))
