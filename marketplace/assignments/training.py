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

import re
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from core import ports
from core.db import retry_transaction
from core.errors import Conflict, NotFound
from core.validation import field_error
from marketplace.assignments import blobs, events, gangs
from marketplace.assignments.models import Assignment, AssignmentUpload
from marketplace.models import Lease

MAX_KEY_CHARS = 300
TRAINER_ERROR_LINES = 20
_STEP_KEY = re.compile(r"^checkpoints/step-(\d{6,9})$")
INIT_FROM_DIR = "init-from"


def _training() -> Any:
    return ports.get(ports.TrainingPort)


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


def _queue(
    leases: list[Lease], *, job_id: str, spec: dict[str, Any], now: datetime
) -> list[Assignment]:
    """One queued assignment per lease (a gang when several), at the job's last
    attempt: each claim makes it the next."""
    from marketplace.assignments import services

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
        services._append(
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
        services._index_bump(lease.node_id)
        queued.append(assignment)
    return queued


@retry_transaction
def train_cancel(*, job_id: str, now: datetime | None = None) -> int:
    """The job was cancelled: its live assignment is told to stop (its node kills the
    trainer; the last checkpoint stays). Returns how many were asked."""
    from marketplace.assignments import services

    now = now or timezone.now()
    _training().node_run_cancel(job_id=job_id)
    asked = 0
    live = Assignment.objects.select_for_update().filter(
        kind=Assignment.Kind.TRAIN, workload_id=job_id, state__in=Assignment.LIVE_STATES
    )
    for assignment in live.order_by("pk"):
        if services._stop(assignment, reason=f"fine-tune job {job_id} cancelled", now=now):
            services._index_bump(assignment.node_id)
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
    from marketplace.assignments import services

    assignment.save()  # the others' ends read it
    ended_here = False
    if state != Assignment.State.SUCCEEDED:
        what = "was lost" if lost else ("stopped" if state == "cancelled" else "failed")
        nodes, ended_here = gangs.others_stop(
            assignment,
            reason=f"gang member {assignment.gang_rank} (node {assignment.node_id}) {what}",
            now=timezone.now(),
        )
        for node_id in nodes:
            services._index_bump(node_id)
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
    from marketplace.assignments.models import AssignmentLogLine

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


def train_lost(assignment: Assignment, *, now: datetime) -> None:
    """The reaper's rest for a lost train claim (the caller ended the assignment): the
    dead node's lease fails at the claim's last renewal and goes back in the book,
    and the node is unhealthy until its agent heartbeats again."""
    from marketplace import services as market
    from providers import services as supply
    from providers.models import NodeLeaseOutcome

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


# --- uploads --------------------------------------------------------------------------------


def _upload_kind(work: dict[str, Any], key: str) -> tuple[str, int | None]:
    prefix = f"{work['output_dir']}/"
    if len(key) > MAX_KEY_CHARS or not key.startswith(prefix):
        raise field_error("key", f"must be under the job's output directory {prefix!r}")
    rest = key.removeprefix(prefix)
    if rest in ("final", "merged"):
        return rest, None
    match = _STEP_KEY.match(rest)
    if match is None:
        raise field_error(
            "key", f"must be {prefix}checkpoints/step-NNNNNN, {prefix}final or {prefix}merged"
        )
    return AssignmentUpload.Kind.CHECKPOINT, int(match.group(1))


def _fenced(node_id: int, assignment_id: int, attempt: int, *, lock: bool) -> Assignment:
    from marketplace.assignments import services

    query = Assignment.objects.filter(node_id=node_id, pk=assignment_id)
    if lock:
        query = query.select_for_update()
    assignment = query.first()
    if assignment is None:
        raise NotFound(f"assignment {assignment_id} not found on node {node_id}")
    if attempt != assignment.attempt or assignment.state not in Assignment.CLAIMED_STATES:
        raise services.StaleAttempt(
            f"assignment {assignment_id}: attempt {attempt} is not current (the assignment "
            f"is {assignment.state} at attempt {assignment.attempt}); stop the work",
            details={
                "assignment": assignment_id,
                "attempt": assignment.attempt,
                "state": assignment.state,
            },
        )
    if assignment.kind != Assignment.Kind.TRAIN:
        raise Conflict(f"assignment {assignment_id} is a {assignment.kind}: it uploads nothing")
    return assignment


def upload_declare(
    *,
    node_id: int,
    assignment_id: int,
    attempt: int,
    key: str,
    sha256: str,
    size: int,
    now: datetime | None = None,
) -> tuple[AssignmentUpload, bool]:
    """Declare an upload; returns it and whether its blob is already stored (then no
    PUT is needed). The same declaration again returns the same upload."""
    upload = _upload_record(
        node_id=node_id,
        assignment_id=assignment_id,
        attempt=attempt,
        key=key,
        sha256=sha256,
        size=size,
        now=now or timezone.now(),
    )
    # After the commit: a bucket's head_object is a network call.
    present = blobs.blob_store().stat(blobs.blob_key(sha256)) == size
    return upload, present


@retry_transaction
def _upload_record(
    *,
    node_id: int,
    assignment_id: int,
    attempt: int,
    key: str,
    sha256: str,
    size: int,
    now: datetime,
) -> AssignmentUpload:
    if not blobs.SHA256.match(sha256):
        raise field_error("sha256", "must be 64 lowercase hexadecimal digits")
    if not 0 <= size <= settings.ASSIGNMENT_UPLOAD_MAX_BYTES:
        raise field_error("size", f"must be 0 to {settings.ASSIGNMENT_UPLOAD_MAX_BYTES} bytes")
    assignment = _fenced(node_id, assignment_id, attempt, lock=True)
    kind, step = _upload_kind(assignment.spec["work"], key)
    plan = assignment.spec["plan"]
    if step is not None and not 1 <= step <= plan["total_steps"]:
        raise field_error("key", f"step {step} is outside the run's 1 to {plan['total_steps']}")
    upload, _ = AssignmentUpload.objects.get_or_create(
        assignment=assignment,
        attempt=attempt,
        key=key,
        sha256=sha256,
        defaults={
            "workload_id": assignment.workload_id,
            "kind": kind,
            "step": step,
            "size": size,
            "created_at": now,
        },
    )
    if upload.size != size:
        raise field_error("size", f"{key} with this SHA-256 was declared as {upload.size} bytes")
    return upload


def upload_put_url(
    *, upload: AssignmentUpload, lease_id: int, base_url: str
) -> tuple[str, dict[str, str]]:
    """The signed PUT URL for the upload's blob, and the headers the PUT must carry."""
    grant = blobs.Grant(
        lease_id=lease_id,
        key=blobs.blob_key(upload.sha256),
        method="PUT",
        sha256=upload.sha256,
        size=upload.size,
    )
    store = blobs.blob_store()
    return store.url(grant, base_url=base_url), store.upload_headers(grant)


def upload_commit(
    *,
    node_id: int,
    assignment_id: int,
    upload_id: int,
    attempt: int,
    now: datetime | None = None,
) -> AssignmentUpload:
    """Check the blob is stored whole, unpack it (outside any transaction: slow I/O,
    content addressed so a repeat is harmless), then record it under the row lock
    with the attempt checked again. Committing twice answers the first commit."""
    _fenced(node_id, assignment_id, attempt, lock=False)
    upload = AssignmentUpload.objects.filter(
        pk=upload_id, assignment_id=assignment_id, attempt=attempt
    ).first()
    if upload is None:
        raise NotFound(f"upload {upload_id} of assignment {assignment_id} not found")
    if upload.committed_at is not None:
        return upload
    store = blobs.blob_store()
    key = blobs.blob_key(upload.sha256)
    stored = store.head(key)
    if stored is None:
        raise Conflict(
            f"upload {upload_id}: nothing was PUT to its URL yet; upload the bytes first",
            details={"upload": upload_id, "reason": "not_uploaded"},
        )
    if stored.size != upload.size:
        raise Conflict(
            f"upload {upload_id}: {stored.size} bytes stored, {upload.size} declared",
            details={"upload": upload_id, "reason": "size_mismatch"},
        )
    if stored.sha256 and stored.sha256 != upload.sha256:
        raise Conflict(
            f"upload {upload_id}: the store holds SHA-256 {stored.sha256}, "
            f"{upload.sha256} declared",
            details={"upload": upload_id, "reason": "hash_mismatch"},
        )
    try:
        archive = store.local_path(key)  # a remote store's download hashes the bytes again
    except blobs.BlobMismatch as mismatch:
        raise Conflict(
            f"upload {upload_id}: {mismatch.message}; upload the bytes again",
            details={"upload": upload_id, "reason": "hash_mismatch"},
        ) from None
    location = _training().artifact_unpack(archive=archive, sha256=upload.sha256)
    return _commit_record(
        node_id, assignment_id, upload_id, attempt, location, now or timezone.now()
    )


@retry_transaction
def _commit_record(
    node_id: int, assignment_id: int, upload_id: int, attempt: int, location: str, now: datetime
) -> AssignmentUpload:
    from marketplace.assignments import services

    assignment = _fenced(node_id, assignment_id, attempt, lock=True)
    upload = AssignmentUpload.objects.select_for_update().get(pk=upload_id)
    if upload.committed_at is None:
        upload.committed_at = now
        upload.location = location
        upload.save(update_fields=["committed_at", "location"])
        if upload.kind == AssignmentUpload.Kind.CHECKPOINT:
            assert upload.step is not None
            _training().node_run_checkpointed(
                job_id=assignment.workload_id,
                attempt=attempt,
                step=upload.step,
                location=location,
                final=upload.step == assignment.spec["plan"]["total_steps"],
            )
    # A commit is a report: it renews the claim.
    assignment.renewed_at = now
    assignment.locked_until = now + services.claim_ttl()
    assignment.save(update_fields=["renewed_at", "locked_until"])
    return upload
