"""Writes of OpenAI batches: creating one from an uploaded JSONL file (every line
checked as its online route checks it), cancelling, finalizing into output and
error files, and the sweep that expires them and restarts their runners.

A batch runs on **interruptible** capacity: its model's interruptible deployment (a
lease of spare GPUs that an on-demand order may preempt), served through the same
relay and node agent as online requests, and its tokens are rated at the price
book's batch discount (usage ``service_tier=batch``). The runner
(marketplace/workloads/batch_runner.py) claims its requests, which are rows, so a
preempted lease, a worker that died or a restart loses nothing: what was pending
(or claimed by a runner that is gone) runs on the next lease.

Life: ``in_progress`` once its lines are checked and stored (a file with a bad line
is a 400 naming the line, and no batch is made); ``finalizing`` when every request
has an outcome, then ``completed`` with its output file (and an error file when
some failed). Cancelling (``cancelling``) stops the pending requests at once; those
running finish, then it is ``cancelled`` with the partial output. Past its
completion window (24 hours) the pending requests expire and so does the batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import ApplicationError, InvalidInput
from core.models import Organization
from core.queue import task_send_on_commit
from marketplace.workloads import inputs
from marketplace.workloads.completions import EMBEDDING_INPUTS_MAX
from marketplace.workloads.errors import conflict, invalid, not_found
from marketplace.workloads.inference import model_resolve
from marketplace.workloads.models import Batch, BatchRequest, File, new_public_id
from marketplace.workloads.storage import StorageFull, file_storage

logger = logging.getLogger(__name__)

# The routes a batch's lines may name, and what each line's body is checked as.
ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
}
COMPLETION_WINDOW = "24h"
WINDOW = timedelta(hours=24)
MAX_REQUESTS = 50_000  # OpenAI's bound on one batch
MAX_CUSTOM_ID = 512
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
OUTPUT_PURPOSE = "batch_output"
RUN_ACTOR = "workloads.batch_run"
LIVE = (Batch.Status.IN_PROGRESS, Batch.Status.FINALIZING, Batch.Status.CANCELLING)
OPEN = (BatchRequest.State.PENDING, BatchRequest.State.RUNNING)
LINE_FIELDS = frozenset({"custom_id", "method", "url", "body"})


# --- create ----------------------------------------------------------------------


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > METADATA_KEYS:
        raise invalid(
            f"metadata must be an object of up to {METADATA_KEYS} pairs", param="metadata"
        )
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= METADATA_KEY_CHARS:
            raise invalid(
                f"metadata keys are strings of 1 to {METADATA_KEY_CHARS} characters",
                param="metadata",
            )
        if not isinstance(item, str) or len(item) > METADATA_VALUE_CHARS:
            raise invalid(
                f"metadata.{key} must be a string of up to {METADATA_VALUE_CHARS} characters",
                param=f"metadata.{key}",
            )
    return dict(value)


def _line_error(line: int, message: str, param: str) -> InvalidInput:
    error = InvalidInput(
        f"input file line {line}: {message}",
        details={"param": param, "line": line},
    )
    error.code = "invalid_batch_line"
    return error


def _body_check(kind: str, body: dict[str, Any]) -> str:
    """The line's body checked as its online route checks it; its model's name."""
    body = inputs.body_object(body, nul_ok=True)
    model = inputs.text(body.get("model"), param="model")
    if not model:
        raise invalid("model is required", param="model", code="missing_model")
    if kind == "embedding":
        inputs.embedding_request(body, max_inputs=EMBEDDING_INPUTS_MAX)
        return model
    if body.get("stream") is True:
        raise invalid(
            "stream must be false or left out: a batch's answers are files", param="stream"
        )
    inputs.generation_request(body, chat=kind == "chat")
    return model


def _lines(file: File, endpoint: str) -> Iterator[tuple[int, str, dict[str, Any], str]]:
    """(line number, custom_id, body, model) of each request line; a 400 naming the
    first line that is not one."""
    seen: set[str] = set()
    kind = ENDPOINTS[endpoint]
    path = file_storage().local_path(file.storage_key)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue  # a blank line (a trailing newline's) holds no request
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise _line_error(number, "is not a JSON object", "line") from None
            if not isinstance(record, dict):
                raise _line_error(number, "is not a JSON object", "line")
            unknown = sorted(set(record) - LINE_FIELDS)
            if unknown:
                raise _line_error(number, f"{unknown[0]} is not a field of a request", unknown[0])
            custom_id = record.get("custom_id")
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
                raise _line_error(
                    number, f"custom_id must be a string of 1 to {MAX_CUSTOM_ID}", "custom_id"
                )
            if custom_id in seen:
                raise _line_error(number, f"custom_id {custom_id!r} is used twice", "custom_id")
            seen.add(custom_id)
            if record.get("method") != "POST":
                raise _line_error(number, "method must be POST", "method")
            if record.get("url") != endpoint:
                raise _line_error(number, f"url must be the batch's endpoint {endpoint}", "url")
            body = record.get("body")
            if not isinstance(body, dict):
                raise _line_error(number, "body must be a JSON object", "body")
            try:
                model = _body_check(kind, body)
            except InvalidInput as exc:
                field = str(exc.details.get("param") or "")
                raise _line_error(
                    number, f"body: {exc.message}", f"body.{field}" if field else "body"
                ) from None
            if len(seen) > MAX_REQUESTS:
                raise _line_error(number, f"a batch holds at most {MAX_REQUESTS} requests", "line")
            yield number, custom_id, body, model


def batch_create(
    *,
    organization: Organization,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: Any = None,
    now: datetime | None = None,
) -> Batch:
    """Check every line of the input file and store the batch with its requests,
    then hand it to a runner. All lines name one model (as OpenAI requires)."""
    if endpoint not in ENDPOINTS:
        raise invalid(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
    if completion_window != COMPLETION_WINDOW:
        raise invalid(f"completion_window must be {COMPLETION_WINDOW}", param="completion_window")
    clean_metadata = _metadata(metadata)
    file = File.objects.filter(
        organization=organization, public_id=input_file_id, deleted_at=None
    ).first()
    if file is None:
        raise not_found("file", input_file_id, param="input_file_id")
    if file.purpose not in ("batch", "batch-api") or file.status != File.Status.PROCESSED:
        raise invalid(
            f"{file.public_id} is not a batch input file: upload one with purpose=batch",
            param="input_file_id",
        )
    rows: list[tuple[int, str, dict[str, Any]]] = []
    model = ""
    for number, custom_id, body, line_model in _lines(file, endpoint):
        if model and line_model != model:
            raise _line_error(
                number,
                f"every request must name one model ({model}), not {line_model}",
                "body.model",
            )
        model = line_model
        rows.append((number, custom_id, body))
    if not rows:
        raise invalid("the input file holds no requests", param="input_file_id")
    try:
        served = model_resolve(organization=organization, name=model)
    except ApplicationError as exc:  # not found: the first line names it
        raise _line_error(rows[0][0], exc.message, "body.model") from None
    now = now or timezone.now()
    public_id = new_public_id("batch")
    with transaction.atomic():
        batch = Batch.objects.create(
            public_id=public_id,
            organization=organization,
            input_file=file,
            endpoint=endpoint,
            completion_window=completion_window,
            model=served.name,
            status=Batch.Status.IN_PROGRESS,
            metadata=clean_metadata,
            total=len(rows),
            created_at=now,
            in_progress_at=now,
            expires_at=now + WINDOW,
        )
        BatchRequest.objects.bulk_create(
            (
                BatchRequest(
                    batch=batch,
                    public_id=f"batch_req_{public_id[6:]}{number:06d}",
                    line=number,
                    custom_id=custom_id,
                    body=body,
                )
                for number, custom_id, body in rows
            ),
            batch_size=1000,
        )
        task_send_on_commit(RUN_ACTOR, batch.public_id)
    return batch


# --- cancel ----------------------------------------------------------------------


def batch_cancel(*, batch: Batch, now: datetime | None = None) -> Batch:
    """Stop the batch: its pending requests are cancelled at once, those running
    finish, then it is ``cancelled`` with what completed in its output file. A batch
    already cancelling or cancelled is answered as it is; a finished one is a 409."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        if locked.status in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
            return locked
        if locked.status not in (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS):
            raise conflict(
                f"{locked.public_id} is {locked.status}: only a batch in progress can be cancelled",
                code="batch_not_cancellable",
            )
        locked.status = Batch.Status.CANCELLING
        locked.cancelling_at = now
        locked.save(update_fields=["status", "cancelling_at"])
        BatchRequest.objects.filter(batch=locked, state=BatchRequest.State.PENDING).update(
            state=BatchRequest.State.CANCELLED, finished_at=now
        )
        task_send_on_commit(RUN_ACTOR, locked.public_id)
    return locked


# --- finalize --------------------------------------------------------------------


def _output_line(request: BatchRequest) -> bytes:
    if request.state in (BatchRequest.State.COMPLETED, BatchRequest.State.FAILED):
        # The response is stored as JSON text already (see BatchRequest.response).
        head = json.dumps({"id": request.public_id, "custom_id": request.custom_id})
        return f'{head[:-1]}, "response": {request.response}, "error": null}}\n'.encode()
    code = f"batch_{request.state}"  # batch_cancelled | batch_expired
    record: dict[str, Any] = {
        "id": request.public_id,
        "custom_id": request.custom_id,
        "response": None,
        "error": {"code": code, "message": f"the batch was {request.state} before it ran"},
    }
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def _store(batch: Batch, states: tuple[str, ...], suffix: str) -> tuple[str, int, str] | None:
    """The requests in ``states`` as JSONL, in their lines' order, stored under a key
    of the batch's own (written again, the same, if a finalize is retried)."""
    requests = (
        BatchRequest.objects.filter(batch=batch, state__in=states)
        .order_by("line")
        .only("public_id", "custom_id", "state", "response")
    )
    if not requests.exists():
        return None
    key = f"{batch.organization_id}/{batch.public_id}-{suffix}"
    try:
        stored = file_storage().save(
            key,
            (_output_line(r) for r in requests.iterator(chunk_size=500)),
            max_bytes=settings.WORKLOADS_MAX_FILE_BYTES * 4,
        )
    except StorageFull as error:
        raise RuntimeError(f"{batch.public_id}: {error}") from None
    return key, stored.bytes, stored.sha256


def _file_row(batch: Batch, stored: tuple[str, int, str] | None, suffix: str) -> File | None:
    if stored is None:
        return None
    key, size, sha256 = stored
    return File.objects.create(
        public_id=new_public_id("file"),
        organization_id=batch.organization_id,
        purpose=OUTPUT_PURPOSE,
        filename=f"{batch.public_id}_{suffix}.jsonl",
        file_type="jsonl",
        bytes=size,
        checksum=sha256,
        storage_key=key,
        status=File.Status.PROCESSED,
    )


def batch_finalize(*, batch: Batch, now: datetime | None = None) -> bool:
    """Write the output and error files of a batch none of whose requests is open,
    and give it its final status: ``cancelled`` when it was cancelling, ``expired``
    past its window, else ``completed``. Returns whether this call finalized it."""
    if BatchRequest.objects.filter(batch=batch, state__in=OPEN).exists():
        return False
    now = now or timezone.now()
    Batch.objects.filter(pk=batch.pk, status=Batch.Status.IN_PROGRESS).update(
        status=Batch.Status.FINALIZING, finalizing_at=now
    )
    # Slow I/O outside a transaction; the rows say what is intended first.
    output = _store(batch, (BatchRequest.State.COMPLETED,), "output")
    errors = _store(
        batch,
        (BatchRequest.State.FAILED, BatchRequest.State.CANCELLED, BatchRequest.State.EXPIRED),
        "error",
    )
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        if locked.status not in (Batch.Status.FINALIZING, Batch.Status.CANCELLING):
            return False
        if locked.status == Batch.Status.CANCELLING:
            status, stamp = Batch.Status.CANCELLED, "cancelled_at"
        elif locked.expired_at is not None:
            status, stamp = Batch.Status.EXPIRED, "expired_at"
        else:
            status, stamp = Batch.Status.COMPLETED, "completed_at"
        locked.output_file = _file_row(locked, output, "output")
        locked.error_file = _file_row(locked, errors, "error")
        locked.status = status
        setattr(locked, stamp, getattr(locked, stamp) or now)
        locked.runner_token, locked.runner_until = "", None
        locked.save()
    return True


def batch_fail(*, batch: Batch, code: str, message: str, now: datetime | None = None) -> None:
    """The batch cannot run at all (its model is gone): every open request is
    failed unrun and the batch is ``failed``, naming why."""
    now = now or timezone.now()
    with transaction.atomic():
        updated = Batch.objects.filter(pk=batch.pk, status__in=LIVE).update(
            status=Batch.Status.FAILED,
            failed_at=now,
            errors={
                "object": "list",
                "data": [{"code": code, "message": message, "param": None, "line": None}],
            },
            runner_token="",
            runner_until=None,
        )
        if updated:
            BatchRequest.objects.filter(batch=batch, state__in=OPEN).update(
                state=BatchRequest.State.FAILED, finished_at=now
            )


# --- the sweep -------------------------------------------------------------------


def batches_tick(*, now: datetime | None = None) -> int:
    """Expire batches past their window (pending requests expire; those running
    finish) and hand each live batch whose runner is gone (never started, or its
    process died: its claim ran out) to a new runner. Each pass of the matching loop
    runs it; cheap, through the live batches' partial index. Returns runners sent."""
    now = now or timezone.now()
    overdue = Batch.objects.filter(
        status__in=(Batch.Status.IN_PROGRESS,), expires_at__lte=now, expired_at=None
    )
    for batch in overdue.order_by("pk"):
        with transaction.atomic():
            if Batch.objects.filter(pk=batch.pk, expired_at=None).update(expired_at=now):
                BatchRequest.objects.filter(batch=batch, state=BatchRequest.State.PENDING).update(
                    state=BatchRequest.State.EXPIRED, finished_at=now
                )
    sent = 0
    orphaned = Batch.objects.filter(status__in=LIVE).exclude(runner_until__gt=now)
    for public_id in orphaned.order_by("pk").values_list("public_id", flat=True):
        task_send_on_commit(RUN_ACTOR, public_id)
        sent += 1
    return sent
