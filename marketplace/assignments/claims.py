"""The node's claim of a queued assignment: a conditional update that raises the
attempt (the fencing token), a gang member's barrier and its re-posts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from core.db import retry_transaction
from core.errors import Conflict
from core.validation import field_error
from marketplace.assignments import events, gangs, training
from marketplace.assignments.common import StaleAttempt, _append, _index_bump, _iso, claim_ttl
from marketplace.assignments.models import (
    Assignment,
)
from marketplace.assignments.run_ends import _live_lease_check, _stop
from marketplace.models import Lease, LeaseGpu


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
