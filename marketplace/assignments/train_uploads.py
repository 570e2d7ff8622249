"""A train run's uploads: a signed PUT URL for a content-addressed blob, and the
commit that checks it, unpacks it for the job's records and names it (a checkpoint
the next attempt resumes from, or the final model). Both answer the same on a retry.
The flow is written at the top of training.py."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from core.db import retry_transaction
from core.errors import Conflict, NotFound
from core.validation import field_error
from marketplace.assignments import blobs
from marketplace.assignments.common import StaleAttempt, _training, claim_ttl
from marketplace.assignments.models import (
    Assignment,
    AssignmentUpload,
)

MAX_KEY_CHARS = 300
_STEP_KEY = re.compile(r"^checkpoints/step-(\d{6,9})$")


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
    query = Assignment.objects.filter(node_id=node_id, pk=assignment_id)
    if lock:
        query = query.select_for_update()
    assignment = query.first()
    if assignment is None:
        raise NotFound(f"assignment {assignment_id} not found on node {node_id}")
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
    assignment.locked_until = now + claim_ttl()
    assignment.save(update_fields=["renewed_at", "locked_until"])
    return upload
