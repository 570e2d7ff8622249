"""Writes of fine-tune jobs: the request's hyperparameters and quote, creation with
its managed order, cancel, and the records of the run on the leased node (progress,
checkpoints, the end)."""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from core.models import Organization
from core.ports import ModelCard
from marketplace.workloads import events as ev
from marketplace.workloads import ports as external
from marketplace.workloads.checkpoints import CheckpointSource, checkpoint_source, inherited
from marketplace.workloads.errors import conflict, insufficient_credit, invalid, not_found
from marketplace.workloads.files import file_check, file_tokens
from marketplace.workloads.managed import (
    append_event,
    gpus_for,
    lease_end,
    order_cancel,
    order_place_managed,
)
from marketplace.workloads.models import (
    File,
    FineTuneCheckpoint,
    FineTuneEvent,
    FineTuneJob,
    new_public_id,
)
from marketplace.workloads.storage import file_storage

SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


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
    # Another job's checkpoint to start from (checkpoints.py); then an empty model or
    # training_type, and absent LoRA shape, are the source's.
    from_checkpoint: str = ""


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
    source: CheckpointSource | None = None

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
    source = None
    if request.from_checkpoint:
        source = checkpoint_source(organization=organization, value=request.from_checkpoint)
        fixed = inherited(
            source,
            model=request.model,
            training_type=request.training_type,
            lora_r=request.lora_r,
            lora_alpha=request.lora_alpha,
            lora_trainable_modules=request.lora_trainable_modules,
        )
        request = dataclasses.replace(request, **fixed)
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
        source=source,
    )


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
    training_type = quote.source.job.training_type if quote.source else request.training_type
    gpus = gpus_for(quote.model, training_type)
    with transaction.atomic():
        job = FineTuneJob.objects.create(
            public_id=job_id,
            organization=organization,
            model=quote.model.name,
            training_file=quote.training_file,
            validation_file=quote.validation_file,
            method=request.method,
            training_type=training_type,
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
            from_checkpoint=quote.source.label if quote.source else "",
        )
        _job_event(job, "job_pending", f"Created fine-tuning job: {job_id}")
        if quote.source is not None:
            _job_event(
                job,
                "job_pending",
                f"Starting from checkpoint {quote.source.label}: the weights of "
                f"{quote.source.job.public_id} at step {quote.source.step}, with a fresh "
                "optimizer from step 0",
                data={"from_checkpoint": quote.source.label, "step": quote.source.step},
            )
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
        append_event(
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
    return order_place_managed(
        organization=job.organization,
        model=job.model,
        work=job.training_type,
        gpus=job.gpu_count,
        workload_kind="fine_tune",
        workload_id=job.public_id,
    )


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
                order_cancel(job.order_ref)
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
        append_event(
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
    append_event(
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
        # The source checkpoint's weights, as the control plane holds them; the node
        # gets its own copy (training.py's claim downloads).
        "init_from": _init_from(job)[1] if job.from_checkpoint else None,
    }


def _init_from(job: FineTuneJob) -> tuple[dict[str, Any], str]:
    """The job's source checkpoint: ({job_id, step}, where its weights are unpacked)."""
    source_id, step = job.from_checkpoint.rsplit(":", 1)
    checkpoint = FineTuneCheckpoint.objects.get(
        job__public_id=source_id, job__organization_id=job.organization_id, step=int(step)
    )
    return (
        {"job_id": source_id, "step": int(step), "label": job.from_checkpoint},
        checkpoint.adapter_path or checkpoint.merged_path,
    )


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
        append_event(
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
            init_from=_init_from(job)[0] if job.from_checkpoint else None,
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
        lease_end(lease_ref, f"fine-tune job {status}")
