"""Starting a fine-tune from another job's checkpoint (Together's ``from_checkpoint``).

This is not a resume. A resume (marketplace/assignments/training.py, the trainer's
``latest_checkpoint``) continues *the same job* after its node went away: weights,
optimizer state, scheduler, RNG and step all come back, and the job trains to the end
it always had. Starting from a checkpoint makes *a new job* whose model begins with the
source checkpoint's weights (the LoRA adapter or the full weights, as the source
trained) and nothing else: a fresh optimizer, step 0, the new job's own data,
hyperparameters, seed, schedule and bill (tokens it trains, as for any job).

``from_checkpoint`` names, within the caller's organization only:

- a job, ``ft-…``: its last checkpoint (the final one of a finished job);
- a job and a step, ``ft-…:N``: that step's checkpoint;
- a checkpoint, ``ftckpt-…`` (the ids the checkpoint lists show);
- a job's output model name, ``ft:<base>:<org>:…``, optionally ``…:N`` likewise.

Another organization's job or checkpoint is a 404 naming the field, as an unknown one
is; a job with no checkpoint, or a step with none, a 400 naming it. The new job's base
model, training type and LoRA shape (rank, alpha, target modules) are the source's:
the weights must fit the model they are loaded into. Given and different: a 400
naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.models import Organization
from marketplace.workloads.errors import invalid, not_found
from marketplace.workloads.models import FineTuneCheckpoint, FineTuneJob

PARAM = "from_checkpoint"
_STEP = re.compile(r"^(?P<name>.+):(?P<step>\d{1,9})$")


@dataclass(frozen=True, slots=True)
class CheckpointSource:
    job: FineTuneJob
    checkpoint: FineTuneCheckpoint

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def label(self) -> str:
        """The canonical ``<job id>:<step>`` form, whatever form was asked for."""
        return f"{self.job.public_id}:{self.checkpoint.step}"

    @property
    def location(self) -> str:
        """Where the control plane unpacked the checkpoint (the job's records)."""
        return self.checkpoint.adapter_path or self.checkpoint.merged_path


def _job(organization: Organization, name: str) -> FineTuneJob | None:
    jobs = FineTuneJob.objects.filter(organization=organization)
    return (
        jobs.filter(public_id=name).first() or jobs.filter(fine_tuned_model=name).first()
        if name
        else None
    )


def source_job(*, organization: Organization, name: str) -> FineTuneJob | None:
    """The organization's job a ``from_checkpoint`` value without its step names (a
    job id, an output model name or a checkpoint id), or None. Together's client asks
    the model limits of this name before it creates a job from a checkpoint."""
    if name.startswith("ftckpt-"):
        checkpoint = (
            FineTuneCheckpoint.objects.select_related("job")
            .filter(public_id=name, job__organization=organization)
            .first()
        )
        return checkpoint.job if checkpoint is not None else None
    return _job(organization, name)


def _at_step(job: FineTuneJob, step: int | None, value: str) -> FineTuneCheckpoint:
    checkpoints = job.checkpoints.order_by("-step", "-pk")
    if step is None:
        found = checkpoints.filter(is_final=True).first() or checkpoints.first()
        if found is None:
            raise invalid(
                f"{value}: job {job.public_id} has no checkpoint yet ({job.status}); "
                "start from a job that saved one",
                param=PARAM,
                code="checkpoint_not_found",
            )
        return found
    found = checkpoints.filter(step=step).first()
    if found is None:
        steps = sorted(checkpoints.values_list("step", flat=True))
        have = ", ".join(str(s) for s in steps) if steps else "none"
        raise invalid(
            f"{value}: job {job.public_id} has no checkpoint at step {step} "
            f"(checkpoints at steps: {have})",
            param=PARAM,
            code="checkpoint_not_found",
        )
    return found


def checkpoint_source(*, organization: Organization, value: str) -> CheckpointSource:
    """Resolve ``from_checkpoint`` within ``organization`` (see the module doc)."""
    if not isinstance(value, str) or not value or len(value) > 300:
        raise invalid(
            "from_checkpoint must be a job id (ft-…), job id:step, or a checkpoint id",
            param=PARAM,
        )
    if value.startswith("ftckpt-"):
        checkpoint = (
            FineTuneCheckpoint.objects.select_related("job")
            .filter(public_id=value, job__organization=organization)
            .first()
        )
        if checkpoint is None:
            raise not_found("checkpoint", value, param=PARAM)
        return CheckpointSource(job=checkpoint.job, checkpoint=checkpoint)
    # A whole name first: an output model name's last part may be all digits.
    job = _job(organization, value)
    step: int | None = None
    if job is None and (match := _STEP.match(value)):
        job = _job(organization, match.group("name"))
        step = int(match.group("step"))
    if job is None:
        raise not_found("fine-tune job", value, param=PARAM)
    return CheckpointSource(job=job, checkpoint=_at_step(job, step, value))


def inherited(
    source: CheckpointSource,
    *,
    model: str,
    training_type: str,
    lora_r: Any,
    lora_alpha: Any,
    lora_trainable_modules: str,
) -> dict[str, Any]:
    """What the source fixes for a job starting from it: its base model, training
    type and LoRA shape, as a job request's fields. Anything given that differs: a
    400 naming it."""
    job = source.job
    hp = job.hyperparameters
    if model and model != job.model:
        raise invalid(
            f"model {model!r} is not the base model of {source.label} ({job.model}): "
            f"leave model out, or name {job.model}",
            param="model",
        )
    if training_type and training_type != job.training_type:
        raise invalid(
            f"{source.label} was trained with {job.training_type}: a job starting from it "
            f"trains with {job.training_type} too",
            param="training_type",
        )
    fields: dict[str, Any] = {"model": job.model, "training_type": job.training_type}
    if job.training_type != "lora":
        return fields
    for name, given in (
        ("lora_r", lora_r),
        ("lora_alpha", lora_alpha),
        ("lora_trainable_modules", lora_trainable_modules or None),
    ):
        same = given is None or given == hp[name]
        if not same and name != "lora_trainable_modules":
            same = isinstance(given, int | float) and float(given) == float(hp[name])
        if not same:
            raise invalid(
                f"{source.label}'s adapter has {name} {hp[name]}: a job starting from it "
                f"keeps that shape (leave {name} out, or give {hp[name]})",
                param=f"training_type.{name}",
            )
        fields[name] = hp[name]
    return fields
