"""Writes of fine-tune jobs: creation with its managed order, cancel and the job's
events. The request's checks and quote are job_requests.py; the records of the run on
the leased node (progress, checkpoints, the end) are job_runs.py; both re-exported
here, the module the other apps and the APIs call."""

from __future__ import annotations

import secrets

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from core.models import Organization
from core.ports import ModelCard
from marketplace.workloads import events as ev
from marketplace.workloads import ports as external
from marketplace.workloads.errors import conflict, insufficient_credit, invalid
from marketplace.workloads.job_requests import (
    LIMITS,
    SUFFIX,
    JobLimits,
    JobRequest,
    Quote,
    finetune_quote,
    job_hyperparameters,
)
from marketplace.workloads.job_runs import (
    _finished_event,
    _job_event,
    finetune_checkpoint_merged,
    finetune_checkpoint_record,
    finetune_job_finish,
    finetune_job_interrupt,
    finetune_job_progress,
    finetune_job_start,
    finetune_jobs_on_lease,
    work_spec,
)
from marketplace.workloads.managed import (
    append_event,
    gpus_for,
    order_cancel,
    order_place_managed,
)
from marketplace.workloads.models import (
    FineTuneJob,
    new_public_id,
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


__all__ = [
    "LIMITS",
    "JobLimits",
    "JobRequest",
    "Quote",
    "finetune_checkpoint_merged",
    "finetune_checkpoint_record",
    "finetune_job_cancel",
    "finetune_job_create",
    "finetune_job_finish",
    "finetune_job_interrupt",
    "finetune_job_progress",
    "finetune_job_start",
    "finetune_jobs_on_lease",
    "finetune_quote",
    "job_hyperparameters",
    "work_spec",
]
