"""Writes of buyer files: uploads (OpenAI's in one request, Together's reserve, PUT
and preprocess), the dataset checks, token counts and deletion.

Slow work (storing bytes, checking a dataset, counting tokens) never runs inside a
database transaction: the row says what is intended first, the slow step runs, and
the outcome is recorded in a short transaction of its own.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.models import Organization
from core.ports import DatasetCheck
from core.queue import task_send_on_commit
from marketplace.workloads import ports as external
from marketplace.workloads.errors import conflict, invalid
from marketplace.workloads.models import File, FineTuneJob, new_public_id
from marketplace.workloads.storage import StorageFull, file_storage

logger = logging.getLogger(__name__)

FILE_PURPOSES = frozenset(
    {"fine-tune", "fine-tune-results", "batch", "batch-api", "eval", "calibration", "user_data"}
)
FILE_TYPES = frozenset({"jsonl", "parquet", "csv"})
# Purposes whose content the runtime checks as a training dataset.
DATASET_PURPOSES = frozenset({"fine-tune", "eval"})
# Files up to this size are checked within the upload request; larger ones by a worker.
INLINE_CHECK_BYTES = 16 * 1024 * 1024
CHECKSUM = re.compile(r"^[0-9a-f]{64}$")
# The actor in marketplace/workloads/tasks.py, sent by name (core/queue.py).
FILE_CHECK_TASK = "file_check_task"


def file_purpose_check(purpose: str) -> str:
    if purpose not in FILE_PURPOSES:
        raise invalid(
            f"purpose must be one of {', '.join(sorted(FILE_PURPOSES))}, not {purpose!r}",
            param="purpose",
        )
    return purpose


def _file_type_of(filename: str, declared: str | None, *, param: str) -> str:
    from_name = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    kind = (declared or from_name).lower()
    if kind not in FILE_TYPES or (declared and from_name != kind):
        raise invalid(
            f"the file must be .jsonl, .parquet or .csv, and named for its type ({filename!r})",
            param=param,
        )
    return kind


def _check_filename(filename: str, *, param: str) -> str:
    name = filename.strip().replace("\\", "/").rsplit("/", 1)[-1]
    if not name or len(name) > 255:
        raise invalid("a file name of 1 to 255 characters is required", param=param)
    return name


def file_upload(
    *, organization: Organization, purpose: str, filename: str, chunks: Iterable[bytes]
) -> File:
    """OpenAI's upload: the bytes arrive with the request. The dataset is checked
    before this returns when it is small (up to INLINE_CHECK_BYTES), by a worker
    otherwise; ``status`` says which."""
    file_purpose_check(purpose)
    name = _check_filename(filename, param="file")
    file_type = _file_type_of(name, None, param="file")
    public_id = new_public_id("file")
    key = f"{organization.pk}/{public_id}"
    try:
        stored = file_storage().save(key, chunks, max_bytes=settings.WORKLOADS_MAX_FILE_BYTES)
    except StorageFull as error:
        raise invalid(str(error), param="file", code="file_too_large") from None
    with transaction.atomic():
        file = File.objects.create(
            public_id=public_id,
            organization=organization,
            purpose=purpose,
            filename=name,
            file_type=file_type,
            bytes=stored.bytes,
            checksum=stored.sha256,
            storage_key=key,
            status=File.Status.UPLOADED,
        )
    return _check_now_or_later(file)


def file_reserve(
    *, organization: Organization, purpose: str, filename: str, file_type: str, checksum: str
) -> File:
    """Together's first step: a row awaiting its bytes, which the client PUTs to a
    signed URL. The same content already uploaded by this organization is a 409
    naming the existing file (the client then uses that one)."""
    file_purpose_check(purpose)
    name = _check_filename(filename, param="file_name")
    kind = _file_type_of(name, file_type or None, param="file_name")
    checksum = (checksum or "").strip().lower()
    if not CHECKSUM.match(checksum):
        raise invalid("checksum must be the file's SHA-256 in hex", param="checksum")
    existing = (
        File.objects.filter(
            organization=organization,
            checksum=checksum,
            purpose=purpose,
            deleted_at=None,
            status=File.Status.PROCESSED,
        )
        .order_by("pk")
        .first()
    )
    if existing is not None:
        raise conflict(
            f"this content was uploaded before as {existing.public_id}",
            code="file_exists",
            file_id=existing.public_id,
        )
    public_id = new_public_id("file")
    return File.objects.create(
        public_id=public_id,
        organization=organization,
        purpose=purpose,
        filename=name,
        file_type=kind,
        checksum=checksum,
        storage_key=f"{organization.pk}/{public_id}",
        status=File.Status.AWAITING_BYTES,
    )


def file_receive(*, file: File, chunks: Iterable[bytes]) -> File:
    """Together's second step: the bytes, checked against the checksum announced."""
    if file.status != File.Status.AWAITING_BYTES:
        raise conflict(f"{file.public_id} already has its content", code="file_already_uploaded")
    storage = file_storage()
    try:
        stored = storage.save(file.storage_key, chunks, max_bytes=settings.WORKLOADS_MAX_FILE_BYTES)
    except StorageFull as error:
        raise invalid(str(error), param="file", code="file_too_large") from None
    if stored.sha256 != file.checksum:
        storage.delete(file.storage_key)
        raise invalid(
            f"the content's SHA-256 is {stored.sha256}, not the checksum {file.checksum} "
            "announced for it; upload again",
            param="checksum",
            code="checksum_mismatch",
        )
    updated = File.objects.filter(pk=file.pk, status=File.Status.AWAITING_BYTES).update(
        bytes=stored.bytes, status=File.Status.UPLOADED
    )
    if not updated:  # a concurrent PUT of the same bytes got there first
        raise conflict(f"{file.public_id} already has its content", code="file_already_uploaded")
    file.refresh_from_db()
    return file


def file_preprocess(*, file: File) -> File:
    """Together's third step: check the dataset now. An invalid file is a 400 with
    the line-numbered reason (the file keeps ``status=error`` and the reason)."""
    if file.status == File.Status.AWAITING_BYTES:
        raise conflict(
            f"{file.public_id} has no content yet: PUT it to the upload URL first",
            code="file_not_uploaded",
        )
    if file.status == File.Status.UPLOADED:
        file = file_check(file=file)
    if file.status == File.Status.ERROR:
        raise invalid(
            f"{file.filename} is not a valid dataset: {file.error_message}",
            param="file",
            code="invalid_file_format",
        )
    return file


def _check_now_or_later(file: File) -> File:
    if file.purpose not in DATASET_PURPOSES:
        File.objects.filter(pk=file.pk).update(status=File.Status.PROCESSED)
        file.status = File.Status.PROCESSED
        return file
    if file.bytes <= INLINE_CHECK_BYTES:
        return file_check(file=file)
    task_send_on_commit(FILE_CHECK_TASK, file.public_id)
    return file


def file_check(*, file: File) -> File:
    """Run the runtime's dataset checks on the stored bytes and record the verdict."""
    path = str(file_storage().local_path(file.storage_key))
    if file.file_type == "csv":
        verdict_valid, fmt, examples = False, "", 0
        message = "CSV is accepted for evaluation only; fine-tune datasets are JSONL or Parquet"
    else:
        try:
            verdict = external.dataset_check(path=path, purpose=file.purpose)
        except Exception as exc:
            # A file the checks could not get through is not left ``uploaded`` for
            # ever (a worker's retries would fail the same way): it is refused, and
            # the failure is logged for us to fix.
            logger.exception("dataset check failed", extra={"file": file.public_id})
            verdict = DatasetCheck(
                valid=False,
                error=f"file: could not be checked ({type(exc).__name__}); "
                "check that it is UTF-8 JSON lines or Parquet, or contact support",
            )
        verdict_valid, fmt, examples, message = (
            verdict.valid,
            verdict.format,
            verdict.examples,
            verdict.error,
        )
    status = File.Status.PROCESSED if verdict_valid else File.Status.ERROR
    File.objects.filter(pk=file.pk, status=File.Status.UPLOADED).update(
        status=status,
        error_message="" if verdict_valid else message,
        dataset_format=fmt,
        examples=examples,
    )
    file.refresh_from_db()
    return file


def file_delete(*, file: File) -> None:
    in_use = FineTuneJob.objects.filter(
        organization=file.organization_id,
        status__in=[
            FineTuneJob.Status.VALIDATING_FILES,
            FineTuneJob.Status.QUEUED,
            FineTuneJob.Status.RUNNING,
        ],
    ).filter(training_file=file) | FineTuneJob.objects.filter(
        validation_file=file,
        status__in=[FineTuneJob.Status.QUEUED, FineTuneJob.Status.RUNNING],
    )
    job = in_use.first()
    if job is not None:
        raise conflict(
            f"{file.public_id} is used by fine-tune job {job.public_id}, which has not finished",
            code="file_in_use",
            param="file_id",
        )
    with transaction.atomic():
        File.objects.filter(pk=file.pk).update(deleted_at=timezone.now())
    file_storage().delete(file.storage_key)


def file_tokens(*, file: File, model: str) -> int:
    """Tokens in ``file`` with ``model``'s tokenizer, counted once per model."""
    cached = file.token_counts.get(model)
    if cached is not None:
        return int(cached)
    count = external.dataset_tokens(
        path=str(file_storage().local_path(file.storage_key)), model=model
    )
    with transaction.atomic():
        locked = File.objects.select_for_update().get(pk=file.pk)
        locked.token_counts = {**locked.token_counts, model: count}
        locked.save(update_fields=["token_counts"])
    file.token_counts = locked.token_counts
    return count


def checksum_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
