"""The node's reports: a batch of a run's events (started, log lines, a train run's
own events, finished, failed), applied once per batch number, each post renewing the
claim."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from core.db import retry_transaction
from core.validation import field_error
from marketplace.assignments import events, training
from marketplace.assignments.claims import _node_assignment_locked
from marketplace.assignments.common import StaleAttempt, _append, _index_bump, claim_ttl
from marketplace.assignments.models import (
    Assignment,
    AssignmentLogLine,
)
from marketplace.assignments.run_ends import _end, _live_lease_check

MAX_EVENTS_PER_BATCH = 1000
MAX_LOG_LINE_CHARS = 4096
MAX_LOG_LINES_PER_RUN = 50_000
MAX_LOG_BYTES_PER_RUN = 16 * 1024 * 1024

TRAIN_EVENTS = frozenset({"training_started", "step", "evaluation"})


@dataclass(frozen=True, slots=True)
class Report:
    assignment: Assignment
    stop: bool
    ttl_seconds: int
    applied: bool  # False: a batch the server had already applied (a retry)


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
