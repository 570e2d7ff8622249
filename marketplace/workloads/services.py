"""Writes of buyer workloads: files, fine-tune jobs, inference deployments.

Slow work (storing bytes, checking a dataset, counting tokens, loading a model)
never runs inside a database transaction: the row says what is intended first, the
slow step runs, and the outcome is recorded in a short transaction of its own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from core.errors import ApplicationError
from core.eventstore import event_append, stream_version
from core.models import Organization
from core.ports import (
    DatasetCheck,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
    UsageRecord,
)
from marketplace.workloads import events as ev
from marketplace.workloads import ports as external
from marketplace.workloads.errors import (
    GenerationFailed,
    conflict,
    insufficient_credit,
    invalid,
    not_found,
)
from marketplace.workloads.models import (
    Deployment,
    File,
    FineTuneCheckpoint,
    FineTuneEvent,
    FineTuneJob,
    new_public_id,
)
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
SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
# A GPU's memory as the order book sells it; the runtime's figures are per model.
GPU_MEMORY_GIB = 80


def _append(stream_id: str, stream_type: str, event: Any, tenant_id: int | None) -> None:
    # Appended last in the transaction: the store's append lock is held to commit.
    event_append(
        stream_type=stream_type,
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[event.to_new_event()],
        tenant_id=tenant_id,
    )


# --- files --------------------------------------------------------------------


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
    from marketplace.workloads.tasks import file_check_task

    transaction.on_commit(lambda: file_check_task.send(file.public_id))
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


# --- fine-tune jobs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A fine-tune job as either API shape asked for it, in one vocabulary."""

    model: str
    training_file: str
    validation_file: str | None = None
    method: str = "sft"
    training_type: str = "lora"
    # Values may be "auto" (OpenAI) or absent; resolved by job_hyperparameters().
    n_epochs: int | str | None = None
    batch_size: int | str | None = None
    learning_rate: float | None = None
    learning_rate_multiplier: float | str | None = None
    lr_scheduler: str = "cosine"
    min_lr_ratio: float = 0.0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    n_checkpoints: int = 1
    n_evals: int = 0
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_trainable_modules: str = "all-linear"
    train_on_inputs: bool | str = "auto"
    dpo_beta: float | None = None
    suffix: str = ""
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    requested: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Quote:
    """What a job would cost, and whether the buyer's credit covers it."""

    model: ModelCard
    training_file: File
    validation_file: File | None
    hyperparameters: dict[str, Any]
    training_tokens: int
    validation_tokens: int
    total_micros: int
    currency: str
    available_micros: int

    @property
    def allowed(self) -> bool:
        return self.available_micros >= self.total_micros


def _base_model(name: str) -> ModelCard:
    if not name:
        raise invalid("model is required", param="model", code="missing_model")
    card = external.base_model(name)
    if card is None:
        raise not_found("model", name, param="model")
    return card


def _dataset(organization: Organization, file_id: str | None, *, param: str) -> File | None:
    if not file_id:
        return None
    file = File.objects.filter(
        organization=organization, public_id=file_id, deleted_at=None
    ).first()
    if file is None:
        raise not_found("file", file_id, param=param)
    if file.status == File.Status.UPLOADED:
        file = file_check(file=file)  # a worker has not got to it yet: check it now
    if file.status == File.Status.AWAITING_BYTES:
        raise invalid(f"{file_id} has no content yet", param=param, code="file_not_uploaded")
    if file.status == File.Status.ERROR:
        raise invalid(
            f"{file_id} ({file.filename}) is not a valid dataset: {file.error_message}",
            param=param,
            code=f"invalid_{param}",
        )
    if file.purpose != "fine-tune":
        raise invalid(
            f"{file_id} was uploaded with purpose {file.purpose!r}, not 'fine-tune'", param=param
        )
    return file


def _positive_int(value: Any, *, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{param} must be a whole number from {low} to {high}", param=param)
    return value


def _number(value: Any, *, param: str, low: float, high: float, open_low: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and math.isnan(value))
    ):
        raise invalid(f"{param} must be a number", param=param)
    if value > high or value < low or (open_low and value == low):
        bound = f"greater than {low}" if open_low else f"at least {low}"
        raise invalid(f"{param} must be {bound} and at most {high}", param=param)
    return float(value)


class JobLimits(TypedDict):
    """The bounds a fine-tune's hyperparameters are checked against: whole numbers,
    and the learning rate's range."""

    max_epochs: int
    max_batch_size: int
    max_checkpoints: int
    max_evals: int
    max_lora_rank: int
    min_learning_rate: float
    max_learning_rate: float


LIMITS: JobLimits = {
    "max_epochs": 20,
    "max_batch_size": 64,
    "max_checkpoints": 20,
    "max_evals": 100,
    "max_lora_rank": 64,
    "min_learning_rate": 1e-7,
    "max_learning_rate": 1.0,
}
BASE_LEARNING_RATE = {"lora": 1e-4, "full": 1e-5}


def job_hyperparameters(request: JobRequest, *, examples: int, card: ModelCard) -> dict[str, Any]:
    """Every value the trainer needs, with "auto" resolved the way OpenAI documents
    it: epochs and batch size from the dataset's size, the learning rate as a
    multiple of the training type's base rate."""
    if request.method != "sft":
        # The runtime trains supervised only (see shapes.DPO_NOT_YET).
        raise invalid("method must be supervised (sft)", param="method")
    if request.training_type not in ("lora", "full"):
        raise invalid("training_type must be Lora or Full", param="training_type")
    if request.training_type == "full" and not card.supports_full_training:
        raise invalid(f"{card.name} can only be fine-tuned with LoRA", param="training_type")
    if request.n_epochs in (None, "auto"):
        # Small datasets need more passes; OpenAI's auto lands on 3 for most.
        n_epochs = 3 if examples < 1000 else 1
    else:
        n_epochs = _positive_int(
            request.n_epochs, param="n_epochs", low=1, high=LIMITS["max_epochs"]
        )
    if request.batch_size in (None, "auto", "max"):
        batch_size = max(1, min(8, examples // 8 or 1))
    else:
        batch_size = _positive_int(
            request.batch_size, param="batch_size", low=1, high=LIMITS["max_batch_size"]
        )
    base_rate = BASE_LEARNING_RATE[request.training_type]
    if request.learning_rate is not None:
        learning_rate = _number(
            request.learning_rate,
            param="learning_rate",
            low=LIMITS["min_learning_rate"],
            high=LIMITS["max_learning_rate"],
        )
    elif request.learning_rate_multiplier not in (None, "auto"):
        multiplier = _number(
            request.learning_rate_multiplier,
            param="learning_rate_multiplier",
            low=0.0,
            high=10.0,
            open_low=True,
        )
        learning_rate = base_rate * multiplier
    else:
        learning_rate = base_rate
    if request.lr_scheduler not in ("linear", "cosine"):
        raise invalid("lr_scheduler must be linear or cosine", param="lr_scheduler")
    params: dict[str, Any] = {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_scheduler": request.lr_scheduler,
        "min_lr_ratio": _number(request.min_lr_ratio, param="min_lr_ratio", low=0.0, high=1.0),
        "warmup_ratio": _number(request.warmup_ratio, param="warmup_ratio", low=0.0, high=1.0),
        "weight_decay": _number(request.weight_decay, param="weight_decay", low=0.0, high=1.0),
        "max_grad_norm": _number(request.max_grad_norm, param="max_grad_norm", low=0.0, high=1e3),
        "n_checkpoints": _positive_int(
            request.n_checkpoints, param="n_checkpoints", low=1, high=LIMITS["max_checkpoints"]
        ),
        "n_evals": _positive_int(request.n_evals, param="n_evals", low=0, high=LIMITS["max_evals"]),
        "train_on_inputs": request.train_on_inputs,
    }
    if request.train_on_inputs not in (True, False, "auto"):
        raise invalid("train_on_inputs must be true, false or auto", param="train_on_inputs")
    if request.training_type == "lora":
        rank = request.lora_r if request.lora_r is not None else 8
        params["lora_r"] = _positive_int(rank, param="lora_r", low=1, high=LIMITS["max_lora_rank"])
        alpha = request.lora_alpha if request.lora_alpha is not None else 2 * params["lora_r"]
        params["lora_alpha"] = _number(
            alpha, param="lora_alpha", low=0.0, high=1024.0, open_low=True
        )
        params["lora_dropout"] = _number(
            request.lora_dropout, param="lora_dropout", low=0.0, high=0.99
        )
        modules = request.lora_trainable_modules or "all-linear"
        modules = modules.strip() if isinstance(modules, str) else ""
        if not re.fullmatch(r"[A-Za-z0-9_.,-]+", modules):
            raise invalid(
                "lora_trainable_modules must be all-linear or comma-separated module names",
                param="lora_trainable_modules",
            )
        params["lora_trainable_modules"] = modules
    return params


def finetune_quote(*, organization: Organization, request: JobRequest) -> Quote:
    """Price a job the way creating it would: the same token counts, the same price
    book function, the same credit check."""
    if request.seed is not None:
        _positive_int(request.seed, param="seed", low=0, high=2**31 - 1)
    card = _base_model(request.model)
    training = _dataset(organization, request.training_file, param="training_file")
    assert training is not None  # required: _dataset raises on an unknown id
    validation = _dataset(organization, request.validation_file, param="validation_file")
    hyperparameters = job_hyperparameters(request, examples=training.examples or 0, card=card)
    if hyperparameters["n_evals"] and validation is None:
        raise invalid("n_evals needs a validation_file", param="n_evals")
    training_tokens = file_tokens(file=training, model=card.name)
    validation_tokens = file_tokens(file=validation, model=card.name) if validation else 0
    estimate = external.finetune_estimate(
        organization_id=organization.pk,
        model=card.name,
        training_type=request.training_type,
        method=request.method,
        training_tokens=training_tokens,
        validation_tokens=validation_tokens,
        n_epochs=hyperparameters["n_epochs"],
        n_evals=hyperparameters["n_evals"],
    )
    currency = estimate.currency
    available = external.credit_available(organization_id=organization.pk, currency=currency)
    return Quote(
        model=card,
        training_file=training,
        validation_file=validation,
        hyperparameters=hyperparameters,
        training_tokens=training_tokens,
        validation_tokens=validation_tokens,
        total_micros=estimate.total_micros,
        currency=currency,
        available_micros=available,
    )


def gpu_memory_need_gib(card: ModelCard, work: str) -> float:
    """GiB of GPU memory ``work`` on ``card`` needs: ``full`` training holds weights,
    gradients and Adam's two moments in fp32 (16 bytes a parameter); ``lora`` training
    and ``serve`` (an inference deployment) hold bf16 weights (2 bytes) and a small
    adapter. A fifth more covers activations (serving: the KV cache)."""
    bytes_per_parameter = 16 if work == "full" else 2
    return card.parameter_count * bytes_per_parameter * 1.2 / 2**30


def gpus_for(card: ModelCard, work: str) -> int:
    """GPUs a fine-tune (``lora``, ``full``) or a deployment (``serve``) of ``card`` needs."""
    return max(1, math.ceil(gpu_memory_need_gib(card, work) / GPU_MEMORY_GIB))


def _output_name(organization: Organization, card: ModelCard, suffix: str, job_id: str) -> str:
    org = slugify(organization.name)[:40] or f"org-{organization.pk}"
    tail = job_id.split("-", 1)[1][:8]
    return f"ft:{card.name}:{org}:{suffix + ':' if suffix else ''}{tail}"


def finetune_job_create(*, organization: Organization, request: JobRequest) -> FineTuneJob:
    """Estimate, check credit (402 naming the missing amount), record the job and
    place a standing marketplace order for the GPUs it needs. The runtime starts
    when the order's lease starts (see followers)."""
    if request.suffix and not SUFFIX.match(request.suffix):
        raise invalid("suffix must be 1 to 40 letters, digits, '-', '_' or '.'", param="suffix")
    quote = finetune_quote(organization=organization, request=request)
    if not quote.allowed:
        raise insufficient_credit(
            needed_micros=quote.total_micros,
            available_micros=quote.available_micros,
            currency=quote.currency,
        )
    job_id = new_public_id("ft")
    gpus = gpus_for(quote.model, request.training_type)
    with transaction.atomic():
        job = FineTuneJob.objects.create(
            public_id=job_id,
            organization=organization,
            model=quote.model.name,
            training_file=quote.training_file,
            validation_file=quote.validation_file,
            method=request.method,
            training_type=request.training_type,
            hyperparameters=quote.hyperparameters,
            requested=request.requested,
            suffix=request.suffix,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            metadata=request.metadata,
            status=FineTuneJob.Status.QUEUED,
            fine_tuned_model=_output_name(organization, quote.model, request.suffix, job_id),
            currency=quote.currency,
            estimate_micros=quote.total_micros,
            training_tokens=quote.training_tokens,
            validation_tokens=quote.validation_tokens,
            gpu_count=gpus,
        )
        _job_event(job, "job_pending", f"Created fine-tuning job: {job_id}")
        _job_event(
            job,
            "job_pending",
            f"Validated training file: {quote.training_file.public_id} "
            f"({quote.training_file.examples} examples, {quote.training_tokens} tokens)",
        )
        order_ref = _order_place_for_job(job)
        job.order_ref = order_ref
        job.save(update_fields=["order_ref"])
        _job_event(job, "job_pending", f"Queued: waiting for {gpus} GPU(s) on the market")
        _append(
            ev.job_stream_id(job_id),
            ev.JOB_STREAM,
            ev.FineTuneJobCreated(
                job_id=job_id,
                organization_id=organization.pk,
                model=job.model,
                training_file=quote.training_file.public_id,
                validation_file=quote.validation_file.public_id if quote.validation_file else None,
                method=job.method,
                training_type=job.training_type,
                hyperparameters=job.hyperparameters,
                estimate_micros=job.estimate_micros,
                currency=job.currency,
                order_ref=order_ref,
            ),
            organization.pk,
        )
    return job


def _order_place_for_job(job: FineTuneJob) -> str:
    # The job ends its lease when it finishes, and a preempted or failed lease puts
    # the order back in the book to resume elsewhere.
    return _order_place_managed(
        organization=job.organization,
        model=job.model,
        work=job.training_type,
        gpus=job.gpu_count,
        workload_kind="fine_tune",
        workload_id=job.public_id,
    )


def _order_place_managed(
    *,
    organization: Organization,
    model: str,
    work: str,
    gpus: int,
    workload_kind: str,
    workload_id: str,
) -> str:
    """Place the order of managed work (a fine-tune job, an inference deployment):
    standing, open-ended and on demand, for ``gpus`` GPUs of one node, at most the
    platform's limit price. The lease is the platform's cost (the buyer pays per
    token), so the order reserves no buyer credit. Returns the order's id."""
    from marketplace import services as market
    from marketplace.models import Order
    from providers import catalog

    card = external.base_model(model)
    need_gib = gpu_memory_need_gib(card, work) if card else GPU_MEMORY_GIB
    order = market.order_place(
        organization=organization,
        spec=market.OrderSpec(
            gpus_per_node=gpus,
            limit_price_per_gpu_hour_micros=settings.WORKLOADS_GPU_HOUR_LIMIT_MICROS,
            # Any GPU in the catalog with the memory each GPU's share needs.
            gpu_models=[m.slug for m in catalog.CATALOG],
            min_gpu_memory_gib=max(1, math.ceil(need_gib / gpus)),
            kind=Order.Kind.ON_DEMAND,
            time_in_force=Order.TimeInForce.STANDING,
            duration_seconds=None,
        ),
        workload_kind=workload_kind,
        workload_id=workload_id,
    )
    return str(order.pk)


def _order_cancel(order_ref: str, *, now: datetime | None = None) -> None:
    from marketplace import services as market
    from marketplace.models import Order

    order = Order.objects.filter(pk=int(order_ref)).first()
    if order is not None and order.state in Order.LIVE_STATES:
        market.order_cancel(order=order, now=now)


def _order_live(order_ref: str) -> bool:
    from marketplace.models import Order

    return bool(order_ref) and (
        Order.objects.filter(pk=int(order_ref), state__in=Order.LIVE_STATES).exists()
    )


def _lease_end(lease_ref: str, reason: str, *, now: datetime | None = None) -> None:
    """End a live lease, billed to ``now`` (default: now): the provider's GPU-seconds
    are settled. A lease already closed is left as it is."""
    from marketplace import services as market
    from marketplace.models import Lease

    lease = Lease.objects.filter(pk=int(lease_ref)).first()
    if lease is not None and lease.state in Lease.LIVE_STATES:
        market.lease_end(lease=lease, reason=reason, now=now)


def _job_event(
    job: FineTuneJob,
    kind: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
    source_position: int | None = None,
) -> FineTuneEvent | None:
    try:
        with transaction.atomic():
            return FineTuneEvent.objects.create(
                job=job,
                public_id=new_public_id("ftevent"),
                created_at=at or timezone.now(),
                level=level,
                type=kind,
                message=message,
                data=data or {},
                source_position=source_position,
            )
    except IntegrityError:
        if source_position is None:
            raise
        return None  # this runtime event was projected already


def finetune_job_cancel(*, job: FineTuneJob) -> FineTuneJob:
    """Cancel in any state. Waiting for GPUs: the order is cancelled and nothing is
    billed. Running: the runtime stops at the end of the current step, keeps its
    last checkpoint, and only completed steps were metered. Finished: a 409."""
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job.pk)
        if job.is_terminal:
            raise conflict(
                f"fine-tune job {job.public_id} has already {job.status}",
                code="job_not_cancellable",
            )
        before = job.status
        now = timezone.now()
        if job.cancel_requested_at is None:
            job.cancel_requested_at = now
        if before in (FineTuneJob.Status.VALIDATING_FILES, FineTuneJob.Status.QUEUED):
            if job.order_ref:
                _order_cancel(job.order_ref)
            job.status = FineTuneJob.Status.CANCELLED
            job.finished_at = now
            _job_event(
                job,
                "job_stopped",
                "Fine-tuning job cancelled before it started; nothing was billed",
            )
        else:
            _job_event(job, "cancel_requested", "Cancel requested: stopping after the current step")
        job.save(update_fields=["status", "cancel_requested_at", "finished_at", "updated_at"])
        _append(
            ev.job_stream_id(job.public_id),
            ev.JOB_STREAM,
            ev.FineTuneJobCancelRequested(job_id=job.public_id, status_before=before),
            job.organization_id,
        )
        if job.status == FineTuneJob.Status.CANCELLED:
            _finished_event(job)
    if before == FineTuneJob.Status.RUNNING:
        external.training_cancel(job_id=job.public_id)
    return job


def _finished_event(job: FineTuneJob) -> None:
    _append(
        ev.job_stream_id(job.public_id),
        ev.JOB_STREAM,
        ev.FineTuneJobFinished(
            job_id=job.public_id,
            organization_id=job.organization_id,
            status=job.status,
            steps_completed=job.steps_completed,
            trained_tokens=job.trained_tokens or 0,
            fine_tuned_model=job.fine_tuned_model if job.status == "succeeded" else None,
            error=job.error,
        ),
        job.organization_id,
    )


def work_spec(job: FineTuneJob) -> dict[str, Any]:
    """The runtime's work spec (runtime/spec.py ``WorkSpec``) as JSON: where the data
    is, what to train, where the artifacts go, and the lease it runs on."""
    storage = file_storage()
    hp = job.hyperparameters
    modules = hp.get("lora_trainable_modules", "all-linear")
    hyperparameters: dict[str, Any] = {
        "epochs": hp["n_epochs"],
        "batch_size": hp["batch_size"],
        "learning_rate": hp["learning_rate"],
        "lr_scheduler": hp["lr_scheduler"],
        # The trainer wants warmup strictly below the whole run.
        "warmup_ratio": min(hp["warmup_ratio"], 0.99),
        "weight_decay": hp["weight_decay"],
        "max_grad_norm": hp["max_grad_norm"],
        "n_checkpoints": hp["n_checkpoints"],
        "n_evals": hp["n_evals"],
        "seed": job.seed,
        "lora": job.training_type == "lora",
        # "auto": masked inputs for chat and prompt/completion data, as Together does.
        "train_on_inputs": hp.get("train_on_inputs") is True,
    }
    if job.training_type == "lora":
        hyperparameters.update(
            lora_r=hp["lora_r"],
            lora_alpha=max(1, round(hp["lora_alpha"])),
            lora_dropout=hp["lora_dropout"],
            # Together's client asks for merged weights by default on download.
            merge_weights=True,
        )
        if modules != "all-linear":
            hyperparameters["lora_target_modules"] = modules.split(",")
    return {
        "job_id": job.public_id,
        "organization_id": job.organization_id,
        "base_model": job.model,
        "training_file": str(storage.local_path(job.training_file.storage_key)),
        "validation_file": (
            str(storage.local_path(job.validation_file.storage_key))
            if job.validation_file
            else None
        ),
        "output_dir": f"jobs/{job.public_id}",
        "hyperparameters": hyperparameters,
        "lease": _lease_info(job.lease_ref),
    }


def _lease_info(lease_ref: str) -> dict[str, Any] | None:
    if not lease_ref:
        return None
    from marketplace.models import Lease

    lease = Lease.objects.filter(pk=int(lease_ref)).first()
    if lease is None:
        return None
    return {
        "id": f"lease-{lease.pk}",
        "provider_organization_id": lease.provider_id,
        "gpu_model": lease.gpu_model,
        "price_micros_per_hour": lease.price_per_gpu_hour_micros,
    }


def finetune_job_start(*, job_id: str, lease_ref: str) -> bool:
    """The job's lease started: mark it running and queue its training for the leased
    node's agent (an assignment of kind ``train``, in this transaction; the node
    resumes from the job's last committed checkpoint). Idempotent: a second delivery
    of the same lease start does nothing."""
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().filter(public_id=job_id).first()
        if job is None or job.status != FineTuneJob.Status.QUEUED:
            return False
        job.status = FineTuneJob.Status.RUNNING
        job.lease_ref = lease_ref
        job.started_at = timezone.now()
        job.save(update_fields=["status", "lease_ref", "started_at", "updated_at"])
        _job_event(job, "job_start", f"Fine-tuning job started on lease {lease_ref}")
        _append(
            ev.job_stream_id(job.public_id),
            ev.JOB_STREAM,
            ev.FineTuneJobStarted(job_id=job.public_id, lease_ref=lease_ref),
            job.organization_id,
        )
        external.training_assign(
            lease_id=int(lease_ref),
            job_id=job_id,
            work=work_spec(job),
            files={
                "training_file": job.training_file.storage_key,
                "validation_file": (
                    job.validation_file.storage_key if job.validation_file else None
                ),
            },
        )
    return True


def finetune_job_progress(
    *,
    job_id: str,
    kind: str,
    message: str,
    at: datetime,
    source_position: int,
    step: int | None = None,
    total_steps: int | None = None,
    data: dict[str, Any] | None = None,
    level: str = "info",
) -> None:
    """One progress line from the runtime (step, loss, eval loss, tokens/s, ETA)."""
    job = FineTuneJob.objects.filter(public_id=job_id).first()
    if job is None:
        return
    created = _job_event(
        job, kind, message, level=level, data=data, at=at, source_position=source_position
    )
    if created is None:
        return
    changes: dict[str, Any] = {"updated_at": timezone.now()}
    if step is not None:
        changes["steps_completed"] = step
    if total_steps is not None:
        changes["total_steps"] = total_steps
    FineTuneJob.objects.filter(pk=job.pk).update(**changes)


def finetune_checkpoint_record(
    *,
    job_id: str,
    step: int,
    at: datetime,
    source_position: int,
    adapter_path: str = "",
    merged_path: str = "",
    is_final: bool = False,
    metrics: dict[str, Any] | None = None,
) -> None:
    job = FineTuneJob.objects.filter(public_id=job_id).first()
    if job is None:
        return
    with transaction.atomic():
        _, created = FineTuneCheckpoint.objects.get_or_create(
            job=job,
            step=step,
            defaults={
                "public_id": new_public_id("ftckpt"),
                "adapter_path": adapter_path,
                "merged_path": merged_path,
                "is_final": is_final,
                "metrics": metrics or {},
                "created_at": at,
            },
        )
        if not created and is_final:
            FineTuneCheckpoint.objects.filter(job=job, step=step).update(is_final=True)
    _job_event(
        job,
        "checkpoint_save",
        f"Checkpoint saved at step {step}" + (" (final)" if is_final else ""),
        data={"step": step, "checkpoint_path": adapter_path, **(metrics or {})},
        at=at,
        source_position=source_position,
    )


def finetune_jobs_on_lease(*, lease_ref: str) -> list[str]:
    """The running jobs a lease carries (one, or none for other work)."""
    if not lease_ref:
        return []
    return list(
        FineTuneJob.objects.filter(lease_ref=lease_ref, status=FineTuneJob.Status.RUNNING)
        .order_by("pk")
        .values_list("public_id", flat=True)
    )


def finetune_job_interrupt(
    *, job_id: str, lease_ref: str, reason: str, at: datetime, source_position: int
) -> None:
    """The job's lease was preempted or its node failed: the order is back in the
    book, and the next lease resumes the run from its last checkpoint."""
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().filter(public_id=job_id).first()
        if job is None or job.status != FineTuneJob.Status.RUNNING or job.lease_ref != lease_ref:
            return
        job.status = FineTuneJob.Status.QUEUED
        job.save(update_fields=["status", "updated_at"])
        _job_event(
            job,
            "job_restarted",
            f"Lease {lease_ref} ended early ({reason}): waiting for GPUs to resume "
            "from the last checkpoint",
            level="warning",
            at=at,
            source_position=source_position,
        )
    # A cancelled job whose lease went away has nothing left to stop.
    if job.cancel_requested_at is not None:
        finetune_job_finish(job_id=job_id, status="cancelled", at=at, source_position=None)


def finetune_checkpoint_merged(
    *,
    job_id: str,
    merged_path: str,
    adapter_path: str,
    step: int,
    loss: float | None,
    at: datetime,
) -> None:
    """The final model's locations (adapter and merged weights) on the final
    checkpoint, created if the runtime's last CheckpointSaved named another step."""
    job = FineTuneJob.objects.filter(public_id=job_id).first()
    if job is None:
        return
    metrics = {"loss": loss} if loss is not None else {}
    with transaction.atomic():
        checkpoint, created = FineTuneCheckpoint.objects.get_or_create(
            job=job,
            step=step,
            defaults={
                "public_id": new_public_id("ftckpt"),
                "adapter_path": adapter_path,
                "merged_path": merged_path,
                "is_final": True,
                "metrics": metrics,
                "created_at": at,
            },
        )
        if not created:
            checkpoint.is_final = True
            checkpoint.merged_path = merged_path or checkpoint.merged_path
            checkpoint.adapter_path = adapter_path or checkpoint.adapter_path
            checkpoint.metrics = {**checkpoint.metrics, **metrics}
            checkpoint.save()
        FineTuneCheckpoint.objects.filter(job=job, is_final=True).exclude(pk=checkpoint.pk).update(
            is_final=False
        )


def finetune_job_finish(
    *,
    job_id: str,
    status: str,
    at: datetime,
    source_position: int | None,
    steps_completed: int | None = None,
    trained_tokens: int | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    """The runtime says the job ended: succeeded, failed, or cancelled (it stopped
    after a cancel request). The lease is handed back."""
    if status not in (
        FineTuneJob.Status.SUCCEEDED,
        FineTuneJob.Status.FAILED,
        FineTuneJob.Status.CANCELLED,
    ):
        raise ValueError(f"not a terminal status: {status}")
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().filter(public_id=job_id).first()
        if job is None or job.is_terminal:
            return
        if status == FineTuneJob.Status.SUCCEEDED and job.cancel_requested_at is not None:
            status = (
                FineTuneJob.Status.CANCELLED
            )  # it finished the last step as it was told to stop
        job.status = status
        job.finished_at = at
        if steps_completed is not None:
            job.steps_completed = steps_completed
        if trained_tokens is None:
            # Every epoch reads the whole file (the count the estimate used); a run
            # stopped early read its completed steps' share of it.
            planned = job.training_tokens * int(job.hyperparameters.get("n_epochs", 1))
            total = job.total_steps or job.steps_completed or 1
            trained_tokens = (
                planned
                if status == FineTuneJob.Status.SUCCEEDED
                else planned * min(job.steps_completed, total) // total
            )
        job.trained_tokens = trained_tokens
        job.error = error if status == FineTuneJob.Status.FAILED else None
        job.save()
        messages = {
            "succeeded": ("job_complete", f"Fine-tuning job succeeded: {job.fine_tuned_model}"),
            "failed": ("job_error", f"Fine-tuning job failed: {(error or {}).get('message', '')}"),
            "cancelled": (
                "job_stopped",
                f"Fine-tuning job cancelled after step {job.steps_completed}",
            ),
        }
        kind, message = messages[status]
        _job_event(
            job,
            kind,
            message,
            level="error" if status == "failed" else "info",
            at=at,
            source_position=source_position,
        )
        _finished_event(job)
        lease_ref = job.lease_ref
    if lease_ref:
        _lease_end(lease_ref, f"fine-tune job {status}")


# --- inference -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model a request may name: a base model, or the caller's fine-tuned one."""

    name: str
    base_model: str
    organization: Organization | None
    adapter_path: str
    created_at: datetime | None


def model_resolve(*, organization: Organization, name: str) -> ServedModel:
    """The model ``name`` as ``organization`` may use it. Another organization's
    fine-tuned model is not found, exactly like one that does not exist."""
    if not name:
        raise invalid("model is required", param="model", code="missing_model")
    card = external.base_model(name)
    if card is not None:
        return ServedModel(card.name, card.name, None, "", None)
    job = FineTuneJob.objects.filter(
        organization=organization, fine_tuned_model=name, status=FineTuneJob.Status.SUCCEEDED
    ).first()
    if job is None:
        raise not_found("model", name, param="model")
    final = (
        job.checkpoints.filter(is_final=True).first() or job.checkpoints.order_by("-step").first()
    )
    return ServedModel(
        name, job.model, organization, final.adapter_path if final else "", job.finished_at
    )


# A deployment's life. The first request for a cold model creates it (``starting``)
# and, in the same transaction, places its marketplace order: managed work, open-ended
# and on demand (``_order_place_managed``). Matching leases GPUs; the workloads
# follower records the lease on the deployment (LeaseStarted); a serving process then
# loads the engine and marks it ``ready`` (``deployment_start``). Requests reuse it
# until no request came for its idle timeout (``deployments_stop_idle``, run by each
# pass of the matching loop) or its lease ends under it; then it is ``stopped``, its
# lease ended and settled, and the next request starts a new one.

# A 503 model_unavailable asks the client to come back after this many seconds; the
# deployment's order keeps waiting in the book meanwhile.
RETRY_AFTER_SECONDS = 10

# Engines this process holds, by deployment id. The runtime's engine registry is per
# process, so each serving process loads a deployment's engine once, for the first
# request it serves, and unloads it when it finds the deployment stopped. A load runs
# on one loader thread (the runtime loads one at a time too); concurrent requests
# share its future, and each waits for it only until its own deadline, so a slow
# load (large weights) is a 503 with Retry-After in time, never a held connection:
# the load carries on and a later request finds the engine.
_engines: set[str] = set()
_engines_load_lock = threading.Lock()
_engine_loads: dict[str, Future[None]] = {}
_engine_loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-load")


def _engine_ensure(deployment: Deployment, *, deadline: float | None = None) -> None:
    """Load the deployment's engine in this process unless it holds it already, and
    wait for the load until ``deadline`` (``time.monotonic()``; None: as long as it
    takes). Outside any transaction."""
    deployment_id = deployment.public_id
    if deployment_id in _engines:
        return
    with _engines_load_lock:
        if deployment_id in _engines:
            return
        future = _engine_loads.get(deployment_id)
        if future is None:
            future = _engine_loader.submit(
                external.engine_load,
                deployment_id=deployment_id,
                base_model=deployment.base_model,
                adapter_path=deployment.adapter_path or None,
            )
            _engine_loads[deployment_id] = future
    wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    try:
        future.result(timeout=wait)
    except FutureTimeout:
        raise _unavailable(
            deployment,
            f"{deployment.model} is loading on its deployment {deployment_id}; "
            f"retry in {RETRY_AFTER_SECONDS} seconds",
        ) from None
    except Exception as exc:
        # The weights would not load (missing, corrupt, out of memory): the caller
        # gets a 503 that says so; the next request tries the load again.
        with _engines_load_lock:
            if _engine_loads.get(deployment_id) is future:
                del _engine_loads[deployment_id]
        logger.exception("engine load failed", extra={"deployment": deployment_id})
        raise _unavailable(
            deployment,
            f"{deployment.model} could not be loaded on its deployment "
            f"{deployment_id} ({type(exc).__name__}: {str(exc)[:200]}); "
            f"retry in {RETRY_AFTER_SECONDS} seconds",
        ) from exc
    with _engines_load_lock:
        _engines.add(deployment_id)
        if _engine_loads.get(deployment_id) is future:
            del _engine_loads[deployment_id]


def _engine_drop(deployment_id: str) -> None:
    with _engines_load_lock:
        _engine_loads.pop(deployment_id, None)
    _engines.discard(deployment_id)
    try:
        external.engine_unload(deployment_id=deployment_id)
    except Exception:  # the engine may be gone with its process already
        logger.warning("engine unload failed", exc_info=True, extra={"deployment": deployment_id})


def _engines_reap() -> None:
    """Unload this process's engines of deployments stopped elsewhere (by the matching
    loop's idle check, or by the follower when their lease ended)."""
    if not _engines:
        return
    held = frozenset(_engines)  # one step under the GIL: safe while others add
    stopped = Deployment.objects.filter(
        public_id__in=sorted(held), status=Deployment.Status.STOPPED
    ).values_list("public_id", flat=True)
    for deployment_id in stopped:
        _engine_drop(deployment_id)


def _order_organization(*, organization: Organization, served: ServedModel) -> Organization:
    """Whose name a deployment's order is in. A fine-tuned model's deployment is its
    owner's; a base model's is shared by every buyer, so it is the operator's when the
    operator buys, else that of the organization whose request started it. Either way
    nothing is billed to it for the lease: managed work is paid per token."""
    if served.organization is not None:
        return served.organization
    operator = Organization.objects.filter(
        is_operator=True, kind__in=[Organization.Kind.BUYER, Organization.Kind.BOTH]
    ).first()
    return operator or organization


def _deployment_live(*, organization: Organization, served: ServedModel) -> Deployment:
    """The live deployment of ``served``, counted as asked for now; or a new one,
    created with its order in one transaction. Concurrent first requests meet on the
    unique live-deployment constraint: the losers' inserts (and so their orders) roll
    back, and they share the winner's. A starting deployment whose order left the book
    unfilled (expired, cancelled) is stopped and replaced."""
    now = timezone.now()
    deployment = Deployment.objects.filter(model=served.name).exclude(status="stopped").first()
    if deployment is not None and deployment.status == Deployment.Status.STARTING:
        if not deployment.lease_ref and not _order_live(deployment.order_ref):
            deployment_stop(deployment=deployment, reason="its order left the book unfilled")
            return _deployment_live(organization=organization, served=served)
        # Asked for: its idle time starts again (the claim in deployment_stop sees it).
        Deployment.objects.filter(pk=deployment.pk, status=Deployment.Status.STARTING).update(
            last_request_at=now
        )
    if deployment is not None:
        return deployment
    public_id = new_public_id("dep")
    card = external.base_model(served.base_model)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                public_id=public_id,
                organization=served.organization,
                model=served.name,
                base_model=served.base_model,
                adapter_path=served.adapter_path,
                idle_timeout_seconds=settings.INFERENCE_IDLE_SECONDS,
                last_request_at=now,
            )
            deployment.order_ref = _order_place_managed(
                organization=_order_organization(organization=organization, served=served),
                model=served.base_model,
                work="serve",
                gpus=gpus_for(card, "serve") if card else 1,
                workload_kind="inference",
                workload_id=public_id,
            )
            deployment.save(update_fields=["order_ref"])
    except IntegrityError:
        # Another request created it first (and placed its order).
        if not Deployment.objects.filter(model=served.name).exclude(status="stopped").exists():
            raise
        return _deployment_live(organization=organization, served=served)
    return deployment


def deployment_acquire(*, organization: Organization, served: ServedModel) -> Deployment:
    """The ready deployment of ``served``, its engine loaded in this process. For a
    cold model the request starts one (a deployment and its order) and waits for the
    lease and the engine, up to ``INFERENCE_START_TIMEOUT_SECONDS``, polling the row:
    no transaction is held while it waits, so the follower's and the matcher's commits
    are seen. No GPUs in time: a 503 ``model_unavailable`` with ``Retry-After``; the
    order stays in the book, and a later request finds the deployment it started."""
    timeout = float(settings.INFERENCE_START_TIMEOUT_SECONDS)
    deadline = time.monotonic() + timeout
    pause = 0.05
    _engines_reap()
    deployment = _deployment_live(organization=organization, served=served)
    while True:
        if deployment.status == Deployment.Status.READY:
            # In use from now: an idle stop that looked before cannot claim it.
            in_use = Deployment.objects.filter(
                pk=deployment.pk, status=Deployment.Status.READY
            ).update(last_request_at=timezone.now())
            if in_use:
                _engine_ensure(deployment, deadline=deadline)
                return deployment
        elif deployment.status == Deployment.Status.STOPPED:
            # Its lease ended before it served (preempted, node failed): start another.
            if time.monotonic() >= deadline:
                raise _model_unavailable(deployment, timeout)
            deployment = _deployment_live(organization=organization, served=served)
            continue
        elif deployment.lease_ref:
            deployment_start(deployment=deployment, deadline=deadline)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _model_unavailable(deployment, timeout)
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)
        deployment.refresh_from_db()


def _model_unavailable(deployment: Deployment, waited: float) -> ApplicationError:
    return _unavailable(
        deployment,
        f"{deployment.model} is not running, and no GPUs were found on the market to start "
        f"it within {waited:g} seconds; its deployment {deployment.public_id} keeps waiting "
        f"for GPUs: retry in {RETRY_AFTER_SECONDS} seconds",
    )


def _unavailable(deployment: Deployment, message: str) -> ApplicationError:
    """A 503 model_unavailable for ``deployment``, asking the client to come back after
    RETRY_AFTER_SECONDS."""
    return ModelUnavailable(
        message,
        details={
            "param": "model",
            "deployment_id": deployment.public_id,
            "retry_after_seconds": RETRY_AFTER_SECONDS,
        },
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def deployment_start(*, deployment: Deployment, deadline: float | None = None) -> bool:
    """The deployment has its lease: load the engine and mark it ready. Returns
    whether this call marked it.

    Where the engine loads: in the serving process, by the request that finds the
    lease recorded (the one that started the deployment, waiting for it, or any later
    one). The engine registry is per process: a process generates only with an engine
    it holds, so neither the follower that records the lease nor a worker could load
    it for the web process. The load waits for the lease, so no engine runs on GPUs
    nobody leased; it runs outside any transaction, and concurrent requests in one
    process share one load (``_engine_ensure``), each waiting until its ``deadline``.
    Another serving process loads its own engine on the first request it serves for
    the deployment."""
    _engine_ensure(deployment, deadline=deadline)
    with transaction.atomic():
        updated = (
            Deployment.objects.filter(
                pk=deployment.pk, status=Deployment.Status.STARTING, lease_ref=deployment.lease_ref
            )
            .exclude(lease_ref="")
            .update(status=Deployment.Status.READY, ready_at=timezone.now())
        )
        if updated:
            _append(
                ev.deployment_stream_id(deployment.public_id),
                ev.DEPLOYMENT_STREAM,
                ev.DeploymentStarted(
                    deployment_id=deployment.public_id,
                    model=deployment.model,
                    organization_id=deployment.organization_id,
                ),
                deployment.organization_id,
            )
    if not updated:
        live = Deployment.objects.filter(pk=deployment.pk).exclude(status=Deployment.Status.STOPPED)
        if not live.exists():
            _engine_drop(deployment.public_id)  # it stopped while the engine loaded
    return bool(updated)


@dataclass
class Completion:
    """A finished or streaming completion's text and exact usage."""

    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


def inference_stream(
    *, organization: Organization, served: ServedModel, request: GenerationRequest, request_id: str
) -> Iterator[GenerationChunk]:
    """Chunks from the model's deployment; usage is recorded when the last chunk is
    produced (server-side counts, streamed or not) — and, when the client goes away
    mid-stream, for the tokens generated until then. The deployment is acquired
    before this returns, so a model that cannot start answers 503 before a stream's
    200 goes out."""
    deployment = deployment_acquire(organization=organization, served=served)
    return _generation(
        organization=organization, deployment=deployment, request=request, request_id=request_id
    )


def _generation(
    *,
    organization: Organization,
    deployment: Deployment,
    request: GenerationRequest,
    request_id: str,
) -> Iterator[GenerationChunk]:
    prompt_tokens = completion_tokens = 0
    finished = False
    try:
        for chunk in external.engine_generate(deployment_id=deployment.public_id, request=request):
            if chunk.prompt_tokens is not None:
                prompt_tokens = chunk.prompt_tokens
            if chunk.completion_tokens is not None:
                completion_tokens = chunk.completion_tokens
            if chunk.finish_reason is not None:
                finished = True
            yield chunk
    except ApplicationError:
        raise  # the request's own fault (a 400 naming the field), or a known state
    except Exception as exc:
        # The engine failed this request alone (its neighbours in the batch carry
        # on): a 500 for this one, in the API's shape, with the engine's log behind it.
        logger.exception("generation failed", extra={"request_id": request_id})
        raise GenerationFailed(
            f"generating {request_id} failed on {deployment.public_id}; retry the request",
            details={"request_id": request_id},
        ) from exc
    finally:
        inference_usage_record(
            organization=organization,
            deployment=deployment,
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            complete=finished,
        )


def embeddings_create(
    *, organization: Organization, served: ServedModel, texts: list[str], request_id: str
) -> EmbeddingResult:
    """Embed ``texts`` with the model's deployment (acquired as a completion's is,
    so a cold model answers 503 in time) and meter the tokens read as the
    deployment's ``tokens.prompt``, exactly as a completion's prompt."""
    deployment = deployment_acquire(organization=organization, served=served)
    try:
        result = external.engine_embed(deployment_id=deployment.public_id, texts=texts)
    except ApplicationError:
        raise
    except Exception as exc:
        logger.exception("embedding failed", extra={"request_id": request_id})
        raise GenerationFailed(
            f"embedding {request_id} failed on {deployment.public_id}; retry the request",
            details={"request_id": request_id},
        ) from exc
    inference_usage_record(
        organization=organization,
        deployment=deployment,
        request_id=request_id,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=0,
        complete=True,
    )
    return result


def inference_usage_record(
    *,
    organization: Organization,
    deployment: Deployment,
    request_id: str,
    prompt_tokens: int,
    completion_tokens: int,
    complete: bool,
) -> None:
    """Meter the request's exact token counts (the engine's, from its last chunk;
    for a stream the client left, the tokens generated until then) and count it on
    its deployment. The usage ids are the request's, so a retry of the recording is
    not billed twice."""
    now = timezone.now()
    # Priced by the base model's tier: a fine-tuned model serves at its base's rate.
    dimensions: dict[str, str | int] = {"model": deployment.base_model}
    records = [
        UsageRecord(
            id=f"{request_id}:{kind}",
            source="api/inference",
            type=f"tokens.{kind}",
            organization_id=organization.pk,
            subject_kind="deployment",
            subject_id=deployment.public_id,
            time=now,
            quantity=quantity,
            dimensions=dimensions,
        )
        for kind, quantity in (("prompt", prompt_tokens), ("completion", completion_tokens))
        if quantity > 0
    ]
    if records:
        statuses = external.usage_record(records)
        for record, status in zip(records, statuses, strict=True):
            if status.startswith("rejected"):
                logger.error("inference usage %s was refused: %s", record.id, status)
    Deployment.objects.filter(pk=deployment.pk).update(
        requests_served=F("requests_served") + 1,
        prompt_tokens=F("prompt_tokens") + prompt_tokens,
        completion_tokens=F("completion_tokens") + completion_tokens,
        last_request_at=now,
    )
    if not complete:
        logger.info(
            "inference request ended before its last chunk",
            extra={"request_id": request_id, "deployment": deployment.public_id},
        )


def deployments_stop_idle(*, now: datetime | None = None) -> int:
    """Stop deployments, starting or ready, that no request asked for during their
    idle timeout; return how many. Each pass of the matching loop runs it (the live
    deployments are at most one per model, found through their partial index)."""
    now = now or timezone.now()
    stopped = 0
    for deployment in Deployment.objects.exclude(status=Deployment.Status.STOPPED).order_by("pk"):
        last = deployment.last_request_at or deployment.ready_at or deployment.created_at
        if last + timedelta(seconds=deployment.idle_timeout_seconds) > now:
            continue
        if deployment_stop(deployment=deployment, reason="idle", idle_since=last, now=now):
            stopped += 1
    return stopped


def deployment_stop(
    *,
    deployment: Deployment,
    reason: str,
    idle_since: datetime | None = None,
    now: datetime | None = None,
) -> bool:
    """Stop a live deployment: its lease ends, the provider's GPU-seconds settled to
    ``now``; an order still in the book is cancelled; the engine is unloaded in this
    process once that commits (other serving processes unload theirs at their next
    request). With ``idle_since`` it is claimed only if no request came since it was
    read (a conditional update). Returns whether this call stopped it."""
    now = now or timezone.now()
    with transaction.atomic():
        query = Deployment.objects.filter(pk=deployment.pk).exclude(
            status=Deployment.Status.STOPPED
        )
        if idle_since is not None:
            query = query.filter(last_request_at=deployment.last_request_at)
        if not query.update(status=Deployment.Status.STOPPED, stopped_at=now):
            return False
        stopped = Deployment.objects.get(pk=deployment.pk)
        why = f"inference deployment {stopped.public_id} stopped: {reason}"
        if stopped.lease_ref:
            _lease_end(stopped.lease_ref, why, now=now)
        if stopped.order_ref:
            # Still in the book (or leased before the lease was recorded): cancelled,
            # so it does not lease GPUs for a deployment that is gone.
            _order_cancel(stopped.order_ref, now=now)
        _append(
            ev.deployment_stream_id(stopped.public_id),
            ev.DEPLOYMENT_STREAM,
            ev.DeploymentStopped(
                deployment_id=stopped.public_id,
                reason=reason,
                requests_served=stopped.requests_served,
            ),
            stopped.organization_id,
        )
        transaction.on_commit(lambda: _engine_drop(stopped.public_id))
    return True


def deployment_lease_started(*, deployment_id: str, lease_ref: str, order_ref: str) -> bool:
    """The deployment's order got its lease (the follower, on LeaseStarted): record
    it; the waiting request, or the next one, loads the engine. A lease that serves no
    starting deployment (it stopped meanwhile, or it is not its order's) ends at once.
    Idempotent: a second delivery of the same lease changes nothing."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().filter(public_id=deployment_id).first()
        if deployment is not None and deployment.lease_ref == lease_ref:
            return False
        if (
            deployment is None
            or deployment.status != Deployment.Status.STARTING
            or deployment.lease_ref
            or deployment.order_ref != order_ref
        ):
            _lease_end(lease_ref, f"inference deployment {deployment_id} is no longer starting")
            return False
        deployment.lease_ref = lease_ref
        deployment.save(update_fields=["lease_ref"])
    return True


def deployment_lease_ended(*, lease_ref: str, reason: str) -> bool:
    """A deployment's lease ended under it (preempted, its node failed, the provider
    withdrew, the order was cancelled): the deployment is stopped, and its order
    cancelled rather than left to lease GPUs again, so the next request starts a new
    one. Leases of anything else are not found here."""
    deployment = (
        Deployment.objects.filter(lease_ref=lease_ref)
        .exclude(status=Deployment.Status.STOPPED)
        .first()
    )
    if deployment is None:
        return False
    return deployment_stop(deployment=deployment, reason=f"its lease ended ({reason})")


def checksum_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelUnavailable(ApplicationError):
    status_code = 503
    code = "model_unavailable"
