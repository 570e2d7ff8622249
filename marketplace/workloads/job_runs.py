"""A fine-tune job's run on its leased node, as the control plane records it: the
runtime's work spec (and a start from another job's checkpoint), the start on a
lease, progress, checkpoints and their merge, an interrupted lease, the end."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.workloads import events as ev
from marketplace.workloads import ports as external
from marketplace.workloads.managed import (
    append_event,
    lease_end,
)
from marketplace.workloads.models import (
    FineTuneCheckpoint,
    FineTuneEvent,
    FineTuneJob,
    new_public_id,
)
from marketplace.workloads.storage import file_storage


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
