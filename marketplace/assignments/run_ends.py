"""The end of a run and what follows from it, for every kind: recording the end,
stopping a live run (a queued one ends at once), asking a run to stop when its lease
is no longer active, and a train run's end in the runtime's record, with the gang's
rules (gangs.py: the first member to end otherwise than succeeding stops the others,
whose ends come back here) and the re-queueing of a crashed trainer (training.py).
One module because these call one another: a stop ends a queued member, whose end
stops the rest of its gang."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from marketplace.assignments import events, gangs
from marketplace.assignments.common import _append, _index_bump, _training
from marketplace.assignments.models import (
    Assignment,
    AssignmentLogLine,
    AssignmentUpload,
)
from marketplace.models import Lease

MAX_REASON_CHARS = 500
TRAINER_ERROR_LINES = 20


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
        state, reason = train_end_state(assignment, state, reason)
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
        train_ended(assignment, state=state, reason=reason, lost=lost)


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


def _live_lease_check(assignment: Assignment, now: datetime) -> bool:
    """Ask the run to stop when its lease is no longer active (the lease's end asks
    already; this covers a lease ended by any other path). True when newly asked."""
    state = Lease.objects.filter(pk=assignment.lease_id).values_list("state", flat=True).first()
    if state == Lease.State.ACTIVE:
        return False
    return _stop(assignment, reason=f"lease {assignment.lease_id} {state}", now=now)


def others_stop(assignment: Assignment, *, reason: str, now: datetime) -> tuple[list[int], bool]:
    """Ask the gang's other live members to stop: the nodes whose index must move,
    and whether one ended here (a queued member ends at once, and its own end then
    decides for the gang when it was the last)."""
    nodes: list[int] = []
    ended = False
    for member in gangs.members(assignment, lock=True):
        if member.pk == assignment.pk or not member.is_live:
            continue
        queued = member.state == Assignment.State.QUEUED
        if _stop(member, reason=reason, now=now):
            nodes.append(member.node_id)
            ended = ended or queued
    return nodes, ended


def _queue(
    leases: list[Lease], *, job_id: str, spec: dict[str, Any], now: datetime
) -> list[Assignment]:
    """One queued assignment per lease (a gang when several), at the job's last
    attempt: each claim makes it the next."""
    previous = (
        Assignment.objects.filter(kind=Assignment.Kind.TRAIN, workload_id=job_id).aggregate(
            last=Max("attempt")
        )["last"]
        or 0
    )
    key = gangs.new_key() if len(leases) > 1 else ""
    queued = []
    for rank, lease in enumerate(leases):
        assignment = Assignment.objects.create(
            node_id=lease.node_id,
            lease=lease,
            organization_id=lease.organization_id,
            kind=Assignment.Kind.TRAIN,
            workload_id=job_id,
            spec={**spec, "gpus": lease.gpu_count, "nodes": len(leases)},
            attempt=previous,
            created_at=now,
            gang=key,
            gang_size=len(leases),
            gang_rank=rank,
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
        queued.append(assignment)
    return queued


def _committed(assignment: Assignment, kind: str) -> AssignmentUpload | None:
    """The run's committed upload of ``kind`` at its attempt: a gang's from any member."""
    query = AssignmentUpload.objects.filter(
        attempt=assignment.attempt, kind=kind, committed_at__isnull=False
    )
    if assignment.gang:
        query = query.filter(assignment__gang=assignment.gang)
    else:
        query = query.filter(assignment=assignment)
    return query.order_by("-pk").first()


def train_end_state(assignment: Assignment, state: str, reason: str) -> tuple[str, str]:
    """A run that exited 0 without its final model committed did not succeed (a gang
    member may: rank 0 may run on another member, which commits it; the last member
    to end checks the gang has it)."""
    if state != Assignment.State.SUCCEEDED or _committed(assignment, "final") is not None:
        return state, reason
    if assignment.gang and gangs.live_peers(assignment):
        return state, reason
    return Assignment.State.FAILED, "the trainer exited 0 but no final model was committed"


def train_ended(assignment: Assignment, *, state: str, reason: str, lost: bool) -> None:
    """The run's end, in the runtime's record (see the module doc); a gang member's
    through the gang's rules (gangs.py)."""
    if assignment.gang:
        _member_ended(assignment, state=state, reason=reason, lost=lost)
        return
    _job_ended(assignment, state=state, reason=reason, lost=lost, members=[assignment])


def _member_ended(assignment: Assignment, *, state: str, reason: str, lost: bool) -> None:
    """A gang member's end. The first member to end otherwise than succeeding stops
    the others. A lost node moves the job on at once; otherwise the last member's
    end decides for the gang (so a trainer that failed because a peer's node died
    counts as that loss, not as a crash)."""
    assignment.save()  # the others' ends read it
    ended_here = False
    if state != Assignment.State.SUCCEEDED:
        what = "was lost" if lost else ("stopped" if state == "cancelled" else "failed")
        nodes, ended_here = others_stop(
            assignment,
            reason=f"gang member {assignment.gang_rank} (node {assignment.node_id}) {what}",
            now=timezone.now(),
        )
        for node_id in nodes:
            _index_bump(node_id)
    gang = gangs.members(assignment)
    if lost:
        # The run moves on at once (the reaper ends the gang's leases next): the
        # first lost member tells the job; the rest of the gang's ends change nothing.
        if not any(m.lost for m in gang if m.pk != assignment.pk):
            _training().node_run_failed(
                job_id=assignment.workload_id,
                attempt=assignment.attempt,
                error=reason or "a node of the gang was lost",
                will_retry=True,
            )
        return
    if ended_here or any(m.is_live for m in gang) or any(m.lost for m in gang):
        return  # (a member ended by the stop above decided, being the last)
    failed = [m for m in gang if m.state == Assignment.State.FAILED]
    crashed = [m for m in failed if m.exit_code not in (None, 0)]
    decider = (crashed or failed or [assignment])[0]
    end_state = decider.state if (crashed or failed) else state
    if end_state == Assignment.State.SUCCEEDED and any(
        m.state != Assignment.State.SUCCEEDED for m in gang
    ):
        end_state = Assignment.State.CANCELLED  # a member was stopped on request
    _job_ended(decider, state=end_state, reason=decider.failure_reason, lost=False, members=gang)


def _crashes(job_id: str) -> int:
    """How many attempts of the job ended with its trainer exiting by itself (a
    non-zero code, not on request); a gang's members count once per attempt, and an
    attempt that lost a node is not a crash (its peers' trainers fail with it)."""
    runs = Assignment.objects.filter(kind=Assignment.Kind.TRAIN, workload_id=job_id)
    crashed = set(
        runs.filter(state=Assignment.State.FAILED, exit_code__isnull=False)
        .exclude(exit_code=0)
        .values_list("attempt", flat=True)
    )
    lost = set(runs.filter(lost=True).values_list("attempt", flat=True))
    return len(crashed - lost)


def _trainer_error(assignment: Assignment, reason: str) -> str:
    """The failure and the trainer's last lines on stderr (a traceback's end)."""
    lines = list(
        AssignmentLogLine.objects.filter(
            assignment=assignment, attempt=assignment.attempt, stream="stderr"
        )
        .order_by("-seq")
        .values_list("text", flat=True)[:TRAINER_ERROR_LINES]
    )
    tail = "\n".join(reversed(lines))
    return f"{reason}: {tail}"[-2000:] if tail else reason


def _job_ended(
    assignment: Assignment, *, state: str, reason: str, lost: bool, members: list[Assignment]
) -> None:
    job_id, attempt = assignment.workload_id, assignment.attempt
    if state == Assignment.State.SUCCEEDED:
        final = _committed(assignment, "final")
        merged = _committed(assignment, "merged")
        assert final is not None  # train_end_state checked it
        _training().node_run_succeeded(
            job_id=job_id,
            attempt=attempt,
            steps=int(assignment.spec["plan"]["total_steps"]),
            final_loss=None,
            model_location=final.location,
            merged_location=merged.location if merged else "",
        )
    elif state == Assignment.State.CANCELLED:
        _training().node_run_stopped(job_id=job_id, attempt=attempt)
    elif state == Assignment.State.FAILED:
        crashed = assignment.exit_code not in (None, 0) and not lost
        if not crashed:
            error = reason or "failed on the node"
            _training().node_run_failed(
                job_id=job_id, attempt=attempt, error=error, will_retry=lost
            )
            return
        assignment.save()  # counted among the crashes below
        retries = settings.ASSIGNMENT_TRAIN_RETRIES
        crashes = _crashes(job_id)
        error = _trainer_error(assignment, reason or "the trainer failed")
        leases = list(Lease.objects.filter(pk__in=[m.lease_id for m in members]).order_by("pk"))
        again = crashes <= retries and all(m.state == Lease.State.ACTIVE for m in leases)
        note = f" (attempt {attempt}; trainer failure {crashes} of at most {retries + 1}" + (
            ": re-queued, resuming from the last checkpoint)" if again else ")"
        )
        _training().node_run_failed(
            job_id=job_id, attempt=attempt, error=error + note, will_retry=again
        )
        if again:
            _queue(
                leases,
                job_id=job_id,
                spec={k: v for k, v in assignment.spec.items() if k not in ("gpus", "nodes")},
                now=timezone.now(),
            )
