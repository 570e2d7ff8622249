"""Assignments of kind ``train``: a fine-tune job's training, run by the leased node's
agent (``python -m runtime.launch``, torchrun for several GPUs), never in a
control-plane process.

- **Queued** when the job's lease starts (``train_assign``, from the workloads
  follower, in its transaction). A job's assignments share one attempt sequence:
  a new assignment starts at the job's last attempt, so the next claim is N + 1.
- **Claimed** like any assignment; the claim's answer adds signed URLs (blobs.py):
  GET for the job's datasets and for the last committed checkpoint, if any.
- **Reports** carry, besides started / finished / failed / log: ``training_started``
  (the trainer's shape of the run), ``step`` and ``evaluation``. The runtime's record
  (port ``training``, runtime/node_training.py) turns them into the job's training
  events and its usage, billed by the control plane's own token counts.
- **Uploads**: ``POST …/runs/{id}/uploads {attempt, key, sha256, size}`` answers a
  signed PUT URL for ``blobs/sha256/<sha256>`` (none when that blob is already
  stored: content addressed), ``POST …/uploads/{upload}/commit {attempt}`` checks the
  blob is there with that size and hash (blobs.py: the filesystem store hashed it as
  it was written; a bucket's ``head_object`` and the download for unpacking), unpacks
  it for the job's records and records it: a checkpoint becomes CheckpointSaved and
  the point the next attempt resumes from; the final model is named when the run
  succeeds. Both answer the same on a retry.
- **Ends**: exit 0 with the final model committed → TrainingSucceeded; the trainer
  exiting non-zero by itself (a crash, an OOM kill: not a lost node, not a stop) →
  TrainingFailed with will_retry and the run queued again on the same lease (it
  resumes from the last checkpoint), up to ``ASSIGNMENT_TRAIN_RETRIES`` times, then
  TrainingFailed for good with the trainer's last stderr lines; another failure on
  the node (it could not start the trainer) → TrainingFailed for good; stopped on
  request → TrainingCancelled when the job was cancelled, else (its lease ended
  under it) it waits for the next lease. A gang's members end by gangs.py's rules.
- **Lost** (the reaper: no renewal within the TTL, or never claimed within two
  TTLs, as on a node no agent runs): the run is re-queued
  (TrainingFailed, will_retry), the dead node's lease fails at the claim's last
  renewal (the provider is paid to there; the order goes back in the book) and the
  node is marked unhealthy until its agent heartbeats again, so the order is matched
  elsewhere. The next node claims attempt N + 1 and resumes from the checkpoint.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from core.db import retry_transaction
from marketplace.assignments import blobs
from marketplace.assignments.common import _index_bump, _training
from marketplace.assignments.models import (
    Assignment,
    AssignmentUpload,
)
from marketplace.assignments.run_ends import (
    TRAINER_ERROR_LINES,
    _queue,
    _stop,
    train_end_state,
    train_ended,
)
from marketplace.assignments.train_uploads import (
    MAX_KEY_CHARS,
    upload_commit,
    upload_declare,
    upload_put_url,
)
from marketplace.models import Lease
from providers import services as supply
from providers.models import NodeLeaseOutcome

INIT_FROM_DIR = "init-from"

# --- queueing -------------------------------------------------------------------------


def train_assign(
    *,
    lease_id: int,
    job_id: str,
    work: dict[str, Any],
    files: dict[str, str | None],
    init_from: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> list[Assignment]:
    """Queue the job's training for its lease's node (in the caller's transaction):
    on a gang lease, one member per lease of the gang (gangs.py). ``work`` is the
    runtime's work spec; ``files`` the workload file store's keys of its datasets
    (``training_file``, ``validation_file``); ``init_from`` another job's checkpoint
    the weights start from ({job_id, step, label}: not a resume, see
    workloads/checkpoints.py), which the claim hands over like a resume's checkpoint.
    Idempotent per lease."""
    now = now or timezone.now()
    lease = Lease.objects.get(pk=lease_id)
    gang = list(
        Lease.objects.filter(order_id=lease.order_id, allocation=lease.allocation).order_by("pk")
    )
    found = list(
        Assignment.objects.filter(
            kind=Assignment.Kind.TRAIN, workload_id=job_id, lease_id__in=[m.pk for m in gang]
        ).order_by("pk")
    )
    if found:
        return found
    plan = _training().training_plan(spec=work)
    _training().node_run_submit(spec=work)
    inputs: dict[str, Any] = {}
    node_work = dict(work)
    for name in ("training_file", "validation_file"):
        key = files.get(name)
        if key:
            filename = str(work[name]).rsplit("/", 1)[-1]
            inputs[name] = {"key": f"files/{key}", "name": f"{name}-{filename}"}
            node_work[name] = inputs[name]["name"]  # the agent puts it beside the spec
        else:
            node_work[name] = None
    spec: dict[str, Any] = {"work": node_work, "plan": plan, "inputs": inputs}
    if init_from is not None:
        spec["init_from"] = init_from
        node_work["init_from"] = INIT_FROM_DIR  # the agent unpacks it beside the spec
    return _queue(gang, job_id=job_id, spec=spec, now=now)


@retry_transaction
def train_cancel(*, job_id: str, now: datetime | None = None) -> int:
    """The job was cancelled: its live assignment is told to stop (its node kills the
    trainer; the last checkpoint stays). Returns how many were asked."""
    now = now or timezone.now()
    _training().node_run_cancel(job_id=job_id)
    asked = 0
    live = Assignment.objects.select_for_update().filter(
        kind=Assignment.Kind.TRAIN, workload_id=job_id, state__in=Assignment.LIVE_STATES
    )
    for assignment in live.order_by("pk"):
        if _stop(assignment, reason=f"fine-tune job {job_id} cancelled", now=now):
            _index_bump(assignment.node_id)
            asked += 1
    return asked


# --- the claim's extras: signed URLs ----------------------------------------------------


def last_checkpoint(job_id: str) -> AssignmentUpload | None:
    return (
        AssignmentUpload.objects.filter(
            workload_id=job_id,
            kind=AssignmentUpload.Kind.CHECKPOINT,
            committed_at__isnull=False,
        )
        .order_by("-step", "-pk")
        .first()
    )


def source_checkpoint(job_id: str, step: int) -> AssignmentUpload | None:
    """Another job's committed checkpoint at ``step`` (a job starting from it)."""
    return (
        AssignmentUpload.objects.filter(
            workload_id=job_id,
            kind=AssignmentUpload.Kind.CHECKPOINT,
            step=step,
            committed_at__isnull=False,
        )
        .order_by("-pk")
        .first()
    )


def _get_url(assignment: Assignment, key: str, base_url: str) -> str:
    grant = blobs.Grant(lease_id=assignment.lease_id, key=key, method="GET")
    return blobs.blob_store().url(grant, base_url=base_url)


def train_claim_downloads(*, assignment: Assignment, base_url: str) -> dict[str, Any]:
    """Signed GET URLs for the run's datasets, the checkpoint it resumes from (its own
    last) and the one its weights start from (another job's, for a job that started
    from a checkpoint: used only while it has none of its own)."""
    downloads: dict[str, Any] = {}
    for name, item in (assignment.spec.get("inputs") or {}).items():
        downloads[name] = {"name": item["name"], "url": _get_url(assignment, item["key"], base_url)}
    checkpoint = last_checkpoint(assignment.workload_id)
    if checkpoint is not None:
        downloads["checkpoint"] = {
            "key": checkpoint.key,
            "step": checkpoint.step,
            "sha256": checkpoint.sha256,
            "size": checkpoint.size,
            "url": _get_url(assignment, blobs.blob_key(checkpoint.sha256), base_url),
        }
    source = assignment.spec.get("init_from")
    found = source_checkpoint(source["job_id"], source["step"]) if source else None
    if found is not None:
        downloads["init_from"] = {
            "name": INIT_FROM_DIR,
            "source": source["label"],
            "step": found.step,
            "sha256": found.sha256,
            "size": found.size,
            "url": _get_url(assignment, blobs.blob_key(found.sha256), base_url),
        }
    return downloads


# --- reports ------------------------------------------------------------------------------


def train_item_apply(assignment: Assignment, item: dict[str, Any]) -> None:
    """One of a train run's own events (the caller holds the row lock and checked the
    attempt): training_started, step, evaluation."""
    job_id, attempt = assignment.workload_id, assignment.attempt
    plan = assignment.spec["plan"]
    data = item.get("data") or {}
    kind = item["type"]
    if kind == "training_started":
        _training().node_run_started(job_id=job_id, attempt=attempt, details=data)
    elif kind == "step":
        _training().node_run_stepped(job_id=job_id, attempt=attempt, report=data, plan=plan)
    elif kind == "evaluation":
        _training().node_run_evaluated(
            job_id=job_id,
            attempt=attempt,
            step=int(data["step"]),
            eval_loss=float(data["eval_loss"]),
            plan=plan,
        )


def train_claimed(assignment: Assignment) -> None:
    _training().node_run_claimed(
        job_id=assignment.workload_id, attempt=assignment.attempt, node_id=assignment.node_id
    )


def train_lost(assignment: Assignment, *, now: datetime) -> None:
    """The reaper's rest for a lost train claim (the caller ended the assignment): the
    dead node's lease fails at the claim's last renewal and goes back in the book,
    and the node is unhealthy until its agent heartbeats again."""
    from marketplace import services as market  # the one loop left: see pyproject.toml

    lease = Lease.objects.get(pk=assignment.lease_id)
    # Never claimed: nothing was delivered after the lease's start.
    renewed = assignment.renewed_at or lease.started_at or now
    if lease.state in Lease.LIVE_STATES:
        market.lease_end(
            lease=lease,
            state=Lease.State.FAILED,
            until=max(renewed, lease.started_at or renewed),
            reason=f"node {assignment.node_id} stopped renewing its claim on "
            f"assignment {assignment.pk}",
            outcome=NodeLeaseOutcome.Outcome.NODE_FAILED,
            requeue=True,
            now=now,
        )
    supply.node_health_lost(
        node_id=assignment.node_id,
        reason=f"stopped renewing its claim on assignment {assignment.pk} "
        f"(last renewal {renewed.isoformat()})"
        if assignment.renewed_at
        else f"never claimed assignment {assignment.pk}",
        now=now,
    )


__all__ = [
    "MAX_KEY_CHARS",
    "TRAINER_ERROR_LINES",
    "last_checkpoint",
    "train_assign",
    "train_cancel",
    "train_claim_downloads",
    "train_claimed",
    "train_end_state",
    "train_ended",
    "train_item_apply",
    "train_lost",
    "upload_commit",
    "upload_declare",
    "upload_put_url",
]
