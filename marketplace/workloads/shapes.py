"""The wire shapes of OpenAI's and Together's APIs over our rows (output), and the
parsing of their requests into ``services.JobRequest`` (input).

A file is one JSON object carrying both vocabularies (OpenAI's ``status`` and
``status_details``, Together's ``FileType``, ``processing_status`` and
``validation_report``): both clients ignore fields they do not know, and the one
``/v1/files`` URL serves both. Jobs differ more (status names, hyperparameter
layout), so each API has its own view and shape over the same row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marketplace.workloads.errors import invalid
from marketplace.workloads.jobs import JobRequest
from marketplace.workloads.models import File, FineTuneCheckpoint, FineTuneEvent, FineTuneJob


def ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


# --- files -----------------------------------------------------------------------

_TOGETHER_FILE_STATUS: dict[str, str] = {
    File.Status.AWAITING_BYTES: "PENDING",
    File.Status.UPLOADED: "QUEUED",
    File.Status.PROCESSED: "COMPLETED",
    File.Status.ERROR: "INVALID_FORMAT",
}
_OPENAI_FILE_STATUS: dict[str, str] = {
    File.Status.AWAITING_BYTES: "uploaded",
    File.Status.UPLOADED: "uploaded",
    File.Status.PROCESSED: "processed",
    File.Status.ERROR: "error",
}


def file_object(file: File) -> dict[str, Any]:
    checked = file.status in (File.Status.PROCESSED, File.Status.ERROR)
    body: dict[str, Any] = {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": ts(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        # OpenAI
        "status": _OPENAI_FILE_STATUS[file.status],
        "status_details": file.error_message or None,
        "expires_at": None,
        # Together
        "FileType": file.file_type,
        "processing_status": _TOGETHER_FILE_STATUS[file.status],
        "LineCount": file.examples or 0,
    }
    if checked and file.purpose in ("fine-tune", "eval"):
        body["validation_report"] = {
            "valid": file.status == File.Status.PROCESSED,
            "file_id": file.public_id,
            "dataset_format": file.dataset_format or None,
            "nlines": file.examples,
            "error": file.error_message or None,
            "error_type": "INVALID_FORMAT" if file.status == File.Status.ERROR else None,
        }
    return body


# --- jobs: OpenAI ----------------------------------------------------------------

_OPENAI_METHOD = {"sft": "supervised", "dpo": "dpo"}


def openai_status(job: FineTuneJob) -> str:
    if job.cancel_requested_at is not None and not job.is_terminal:
        return "cancelled"  # it stops after the current step and produces no model
    return job.status


def openai_job(job: FineTuneJob) -> dict[str, Any]:
    hp = job.hyperparameters
    requested = job.requested.get("hyperparameters", {})
    hyperparameters = {
        "n_epochs": hp.get("n_epochs"),
        "batch_size": hp.get("batch_size"),
        "learning_rate_multiplier": requested.get("learning_rate_multiplier")
        if isinstance(requested.get("learning_rate_multiplier"), int | float)
        else round(hp.get("learning_rate", 0) / (1e-4 if job.training_type == "lora" else 1e-5), 6),
    }
    method_hp = dict(hyperparameters)
    if job.method == "dpo":
        method_hp["beta"] = hp.get("dpo_beta")
    estimated_finish = None
    if job.status == FineTuneJob.Status.RUNNING and job.started_at and job.total_steps:
        done = max(job.steps_completed, 1)
        elapsed = (job.updated_at - job.started_at).total_seconds()
        estimated_finish = int(job.started_at.timestamp()) + int(elapsed / done * job.total_steps)
    succeeded = job.status == FineTuneJob.Status.SUCCEEDED
    return {
        "object": "fine_tuning.job",
        "id": job.public_id,
        "created_at": ts(job.created_at),
        "finished_at": ts(job.finished_at),
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model if succeeded else None,
        "organization_id": f"org-{job.organization_id}",
        "status": openai_status(job),
        "training_file": job.training_file.public_id,
        "validation_file": job.validation_file.public_id if job.validation_file else None,
        "result_files": [],
        "hyperparameters": hyperparameters,
        "method": {
            "type": _OPENAI_METHOD[job.method],
            _OPENAI_METHOD[job.method]: {"hyperparameters": method_hp},
        },
        "trained_tokens": job.trained_tokens if job.is_terminal else None,
        "error": job.error,
        "seed": job.seed,
        "suffix": job.suffix or None,
        "metadata": job.metadata or None,
        "integrations": [],
        "estimated_finish": estimated_finish,
        "user_provided_suffix": job.suffix or None,
    }


def openai_event(event: FineTuneEvent) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": event.public_id,
        "created_at": ts(event.created_at),
        "level": "warn" if event.level == "warning" else event.level,
        "message": event.message,
        "type": "metrics" if event.data.get("loss") is not None else "message",
        "data": event.data or None,
    }


def openai_checkpoint(checkpoint: FineTuneCheckpoint, job: FineTuneJob) -> dict[str, Any]:
    metrics = checkpoint.metrics or {}
    name = f"{job.fine_tuned_model}:ckpt-step-{checkpoint.step}"
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": checkpoint.public_id,
        "created_at": ts(checkpoint.created_at),
        "fine_tuned_model_checkpoint": job.fine_tuned_model if checkpoint.is_final else name,
        "fine_tuning_job_id": job.public_id,
        "step_number": checkpoint.step,
        "metrics": {
            "step": checkpoint.step,
            "train_loss": metrics.get("loss", metrics.get("train_loss")),
            "valid_loss": metrics.get("eval_loss", metrics.get("valid_loss")),
            "full_valid_loss": metrics.get("eval_loss"),
        },
    }


# --- jobs: Together ---------------------------------------------------------------

_TOGETHER_STATUS: dict[str, str] = {
    FineTuneJob.Status.VALIDATING_FILES: "pending",
    FineTuneJob.Status.QUEUED: "queued",
    FineTuneJob.Status.RUNNING: "running",
    FineTuneJob.Status.SUCCEEDED: "completed",
    FineTuneJob.Status.FAILED: "error",
    FineTuneJob.Status.CANCELLED: "cancelled",
}


def together_status(job: FineTuneJob) -> str:
    if job.cancel_requested_at is not None and not job.is_terminal:
        return "cancel_requested"
    return _TOGETHER_STATUS[job.status]


def together_event(event: FineTuneEvent) -> dict[str, Any]:
    data = event.data or {}
    return {
        "object": "fine-tune-event",
        "created_at": iso(event.created_at),
        "level": {"warn": "warning"}.get(event.level, event.level),
        "message": event.message,
        "type": event.type,
        "step": data.get("step"),
        "total_steps": data.get("total_steps"),
        "token_count": data.get("token_count"),
        "checkpoint_path": data.get("checkpoint_path"),
        "param_count": None,
        "wandb_url": "",
        "hash": "",
    }


def together_job(job: FineTuneJob, *, with_events: bool = False) -> dict[str, Any]:
    hp = job.hyperparameters
    if job.training_type == "lora":
        training_type: dict[str, Any] = {
            "type": "Lora",
            "lora_r": hp.get("lora_r"),
            "lora_alpha": int(hp.get("lora_alpha") or 0),
            "lora_dropout": hp.get("lora_dropout"),
            "lora_trainable_modules": hp.get("lora_trainable_modules"),
        }
    else:
        training_type = {"type": "Full"}
    if job.method == "dpo":
        training_method: dict[str, Any] = {"method": "dpo", "dpo_beta": hp.get("dpo_beta")}
    else:
        training_method = {"method": "sft", "train_on_inputs": hp.get("train_on_inputs", "auto")}
    scheduler_args: dict[str, Any] = {"min_lr_ratio": hp.get("min_lr_ratio", 0.0)}
    if hp.get("lr_scheduler") == "cosine":
        scheduler_args["num_cycles"] = 0.5
    body: dict[str, Any] = {
        "id": job.public_id,
        "object": "fine-tune",
        "status": together_status(job),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "user_id": f"org-{job.organization_id}",
        "owner_address": f"org-{job.organization_id}",
        "model": job.model,
        "model_output_name": job.fine_tuned_model,
        "adapter_output_name": f"{job.fine_tuned_model}:adapter"
        if job.training_type == "lora"
        else None,
        "suffix": job.suffix or None,
        "training_file": job.training_file.public_id,
        "validation_file": job.validation_file.public_id if job.validation_file else "",
        "n_epochs": hp.get("n_epochs"),
        "n_checkpoints": hp.get("n_checkpoints"),
        "n_evals": hp.get("n_evals"),
        "batch_size": hp.get("batch_size"),
        "learning_rate": hp.get("learning_rate"),
        "lr_scheduler": {
            "lr_scheduler_type": hp.get("lr_scheduler", "cosine"),
            "lr_scheduler_args": scheduler_args,
        },
        "warmup_ratio": hp.get("warmup_ratio"),
        "max_grad_norm": hp.get("max_grad_norm"),
        "weight_decay": hp.get("weight_decay"),
        "random_seed": job.seed,
        "training_type": training_type,
        "training_method": training_method,
        "packing": True,
        "token_count": job.training_tokens,
        "trained_tokens": job.trained_tokens,
        "total_price": job.estimate_micros // 1_000_000 if job.estimate_micros else 0,
        "estimated_price_micros": job.estimate_micros,
        "steps_completed": job.steps_completed,
        "total_steps": job.total_steps,
        "epochs_completed": None,
        "queue_depth": None,
        "wandb_project_name": None,
        "wandb_url": None,
        "from_checkpoint": job.from_checkpoint or None,
    }
    if job.error:
        body["error"] = job.error.get("message")
    if with_events:
        body["events"] = [together_event(e) for e in job.events.order_by("pk")]
    return body


def together_checkpoint(checkpoint: FineTuneCheckpoint, job: FineTuneJob) -> dict[str, Any]:
    label = "Final" if checkpoint.is_final else "Intermediate"
    return {
        "checkpoint_type": f"{label} checkpoint (step {checkpoint.step})",
        "created_at": iso(checkpoint.created_at),
        "path": f"{job.public_id}:{checkpoint.step}",
        "step": checkpoint.step,
        "checkpoint": "adapter" if checkpoint.adapter_path else "model",
        "object_name": f"{job.fine_tuned_model}:{checkpoint.step}",
    }


# --- requests -------------------------------------------------------------------


def _dict(value: Any, *, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{param} must be an object", param=param)
    return value


def _str(value: Any, *, param: str, required: bool = False) -> str:
    if value in (None, ""):
        if required:
            raise invalid(f"{param} is required", param=param, code="missing_required_parameter")
        return ""
    if not isinstance(value, str):
        raise invalid(f"{param} must be a string", param=param)
    return value


def _metadata(value: Any) -> dict[str, str]:
    metadata = _dict(value, param="metadata")
    if len(metadata) > 16:
        raise invalid("metadata may have at most 16 keys", param="metadata")
    for key, item in metadata.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise invalid(
                "metadata keys are strings of up to 64 characters, values up to 512",
                param=f"metadata.{key}",
            )
    return metadata


# The API speaks both vocabularies' DPO fields, and the price book prices DPO, but the
# runtime trains supervised only: a DPO job is refused rather than trained as SFT.
DPO_NOT_YET = "preference (DPO) fine-tuning is not available yet: use supervised (SFT)"


def openai_job_request(data: Any) -> JobRequest:
    body = _dict(data, param="body")
    method = _dict(body.get("method"), param="method")
    method_type = _str(method.get("type"), param="method.type") or "supervised"
    if method_type not in ("supervised", "dpo"):
        raise invalid(
            f"method.type {method_type!r} is not supported: use supervised",
            param="method.type",
        )
    if method_type == "dpo":
        raise invalid(DPO_NOT_YET, param="method.type")
    section = _dict(method.get(method_type), param=f"method.{method_type}")
    hyperparameters = {
        **_dict(body.get("hyperparameters"), param="hyperparameters"),
        **_dict(section.get("hyperparameters"), param=f"method.{method_type}.hyperparameters"),
    }
    unknown = set(hyperparameters) - {"n_epochs", "batch_size", "learning_rate_multiplier", "beta"}
    if unknown:
        name = sorted(unknown)[0]
        raise invalid(f"unknown hyperparameter {name!r}", param=f"hyperparameters.{name}")
    beta = hyperparameters.get("beta")
    seed = body.get("seed")
    return JobRequest(
        model=_str(body.get("model"), param="model", required=True),
        training_file=_str(body.get("training_file"), param="training_file", required=True),
        validation_file=_str(body.get("validation_file"), param="validation_file") or None,
        method="dpo" if method_type == "dpo" else "sft",
        training_type="lora",
        n_epochs=hyperparameters.get("n_epochs"),
        batch_size=hyperparameters.get("batch_size"),
        learning_rate_multiplier=hyperparameters.get("learning_rate_multiplier"),
        n_evals=1 if body.get("validation_file") else 0,
        dpo_beta=None if beta in (None, "auto") else beta,
        suffix=_str(body.get("suffix"), param="suffix"),
        seed=seed,
        metadata=_metadata(body.get("metadata")),
        requested={"hyperparameters": hyperparameters, "method": method_type},
    )


def together_job_request(data: Any) -> JobRequest:
    body = _dict(data, param="body")
    # Another job's checkpoint to start from (workloads/checkpoints.py): then the
    # base model, training type and LoRA shape default to that job's.
    from_checkpoint = _str(body.get("from_checkpoint"), param="from_checkpoint")
    given_type = _dict(body.get("training_type"), param="training_type")
    training_type = given_type or ({} if from_checkpoint else {"type": "Lora"})
    kind = training_type.get("type")
    if kind not in ("Lora", "Full") and not (from_checkpoint and not given_type):
        raise invalid("training_type.type must be Lora or Full", param="training_type.type")
    method = _dict(body.get("training_method"), param="training_method") or {"method": "sft"}
    if method.get("method") not in ("sft", "dpo"):
        raise invalid("training_method.method must be sft", param="training_method.method")
    if method.get("method") == "dpo":
        raise invalid(DPO_NOT_YET, param="training_method.method")
    scheduler = _dict(body.get("lr_scheduler"), param="lr_scheduler")
    scheduler_args = _dict(
        scheduler.get("lr_scheduler_args"), param="lr_scheduler.lr_scheduler_args"
    )
    return JobRequest(
        model=_str(body.get("model"), param="model", required=not from_checkpoint),
        training_file=_str(body.get("training_file"), param="training_file", required=True),
        validation_file=_str(body.get("validation_file"), param="validation_file") or None,
        method=method["method"],
        training_type={"Lora": "lora", "Full": "full"}.get(kind or "", ""),
        n_epochs=body.get("n_epochs", 1),
        batch_size=body.get("batch_size", "max"),
        learning_rate=body.get("learning_rate", 1e-5 if kind == "Full" else None),
        lr_scheduler=scheduler.get("lr_scheduler_type", "cosine"),
        min_lr_ratio=scheduler_args.get("min_lr_ratio", 0.0) or 0.0,
        warmup_ratio=body.get("warmup_ratio", 0.0) or 0.0,
        weight_decay=body.get("weight_decay", 0.0) or 0.0,
        max_grad_norm=body.get("max_grad_norm", 1.0),
        n_checkpoints=body.get("n_checkpoints", 1) or 1,
        n_evals=body.get("n_evals", 0) or 0,
        lora_r=training_type.get("lora_r"),
        lora_alpha=training_type.get("lora_alpha"),
        lora_dropout=training_type.get("lora_dropout", 0.0) or 0.0,
        lora_trainable_modules=training_type.get("lora_trainable_modules")
        or ("" if from_checkpoint else "all-linear"),
        train_on_inputs=method.get("train_on_inputs", "auto"),
        dpo_beta=method.get("dpo_beta"),
        suffix=_str(body.get("suffix"), param="suffix"),
        seed=body.get("random_seed"),
        requested={k: v for k, v in body.items() if not k.startswith(("wandb", "hf_api"))},
        from_checkpoint=from_checkpoint,
    )
