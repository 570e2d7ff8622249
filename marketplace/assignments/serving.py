"""Assignments of kind ``serve``: an inference deployment's engine, run by the leased
node's agent (``python -m runtime.serve``) on the leased GPUs, never in a
control-plane process.

- **Queued** when the deployment's lease starts (``serve_assign``, from the workloads
  follower, in its transaction).
- **Claimed** like any assignment; the claim's answer adds, for a fine-tuned model, a
  signed URL for its trained adapter (the job's committed ``final`` upload).
- **Running** once the node reports ``started``: its agent reports it when the
  engine has loaded, so a running serve assignment is a deployment ready to serve
  (``serve_state``). It renews its claim like any run for as long as it serves.
- **Requests** reach it through the relay (marketplace/workloads/relay.py): the
  agent takes batches of its deployment's requests and posts their replies; both
  endpoints check the node and the attempt here (``serve_assignment_current``).
- **Ends** when the deployment stops (its lease ends: every assignment of the lease is
  asked to stop) or its node is lost (the reaper: no renewal within the TTL; the
  lease fails at the last renewal and the node is unhealthy until it heartbeats
  again, as for a lost train run, so the deployment is stopped and the next request
  starts a new one elsewhere). An engine that failed to load on a live node is
  queued again on the same lease by the next request (``serve_assign``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.errors import NotFound
from marketplace.assignments import blobs, events
from marketplace.assignments.common import StaleAttempt, _append, _index_bump
from marketplace.assignments.models import Assignment, AssignmentUpload
from marketplace.models import Lease


def serve_assign(
    *, lease_id: int, deployment_id: str, spec: dict[str, Any], now: datetime | None = None
) -> Assignment:
    """Queue the deployment's engine for its lease's node (in the caller's
    transaction). ``spec``: ``{deployment_id, base_model, adapter_job, max_batch}``
    (``adapter_job``: the fine-tune job whose trained adapter it serves, or "").
    Idempotent per lease while one is live; after one ended (its engine failed to
    load) a new one is queued on the same lease: the node tries the load again. The
    lease's row lock orders concurrent callers."""
    now = now or timezone.now()
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease_id)
        found = (
            Assignment.objects.filter(
                kind=Assignment.Kind.SERVE,
                workload_id=deployment_id,
                lease_id=lease_id,
                state__in=Assignment.LIVE_STATES,
            )
            .order_by("-pk")
            .first()
        )
        if found is not None:
            return found
        return _serve_queue(lease, deployment_id, spec, now)


def _serve_queue(
    lease: Lease, deployment_id: str, spec: dict[str, Any], now: datetime
) -> Assignment:
    assignment = Assignment.objects.create(
        node_id=lease.node_id,
        lease=lease,
        organization_id=lease.organization_id,
        kind=Assignment.Kind.SERVE,
        workload_id=deployment_id,
        spec={**spec, "gpus": lease.gpu_count},
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


@dataclass(frozen=True, slots=True)
class ServeState:
    """The deployment's serve assignment as the gateway needs it."""

    assignment_id: int
    state: str
    attempt: int
    locked_until: datetime | None
    failure_reason: str

    @property
    def serving(self) -> bool:
        """Running with a fresh claim: its node loaded the engine and still renews."""
        return (
            self.state == Assignment.State.RUNNING
            and self.locked_until is not None
            and self.locked_until >= timezone.now()
        )

    @property
    def live(self) -> bool:
        return self.state in Assignment.LIVE_STATES and (
            self.locked_until is None or self.locked_until >= timezone.now()
        )


def serve_state(*, deployment_id: str) -> ServeState | None:
    """The newest serve assignment of the deployment, or None (its lease has not
    started yet)."""
    row = (
        Assignment.objects.filter(kind=Assignment.Kind.SERVE, workload_id=deployment_id)
        .order_by("-pk")
        .values_list("pk", "state", "attempt", "locked_until", "failure_reason")
        .first()
    )
    if row is None:
        return None
    return ServeState(*row)


def serve_assignment_current(*, node_id: int, assignment_id: int, attempt: int) -> Assignment:
    """The node's serve assignment, if ``attempt`` is its current claim: another
    node's (or another kind's) is a 404, a stale or ended attempt a 409 (the node
    must stop serving). Reads only."""
    assignment = Assignment.objects.filter(
        node_id=node_id, pk=assignment_id, kind=Assignment.Kind.SERVE
    ).first()
    if assignment is None:
        raise NotFound(f"serve assignment {assignment_id} not found on node {node_id}")
    if attempt != assignment.attempt or assignment.state not in Assignment.CLAIMED_STATES:
        raise StaleAttempt(
            f"assignment {assignment_id}: attempt {attempt} is not current (the assignment "
            f"is {assignment.state} at attempt {assignment.attempt}); stop serving",
            details={
                "assignment": assignment_id,
                "attempt": assignment.attempt,
                "state": assignment.state,
            },
        )
    return assignment


def serve_claim_downloads(*, assignment: Assignment, base_url: str) -> dict[str, Any]:
    """A signed GET URL for the trained adapter a fine-tuned model's engine loads."""
    job_id = str(assignment.spec.get("adapter_job") or "")
    if not job_id:
        return {}
    final = (
        AssignmentUpload.objects.filter(
            workload_id=job_id, kind=AssignmentUpload.Kind.FINAL, committed_at__isnull=False
        )
        .order_by("-pk")
        .first()
    )
    if final is None:
        return {}
    grant = blobs.Grant(
        lease_id=assignment.lease_id, key=blobs.blob_key(final.sha256), method="GET"
    )
    return {
        "adapter": {
            "sha256": final.sha256,
            "size": final.size,
            "url": blobs.blob_store().url(grant, base_url=base_url),
        }
    }
