"""The control plane's record of a training run that runs on a provider's node.

The node's agent runs ``python -m runtime.launch`` (torchrun for several GPUs) and
reports through the assignment protocol (marketplace/assignments); the assignment
services call these functions (through the ``training`` port, core/ports.py) to
turn the reports into what the in-process trainer used to produce: the run's row
(``TrainingRun``), its events on ``training:<job id>`` (TrainingStarted, Progressed,
Evaluated, CheckpointSaved, Succeeded, Failed, Cancelled), and its usage. Nothing
here imports torch: it runs in the web process.

What is trusted from the node, and why
---------------------------------------
- **That a step ran, and its number.** Only the node can know; the attempt (the
  fencing token) proves the report comes from the node holding the run now. A step
  is billed under ``<job>:<step>:train``, so a step reported twice (a retried post,
  or the same step redone after a resume) is billed once, and a node cannot bill a
  step beyond ``total_steps`` (refused as bad input).
- **Not the token counts.** What a step costs is computed here from the plan
  (``training_plan``): the control plane tokenizes the job's dataset itself (as it
  did for the estimate) and builds the same rows the trainer does, and each step is
  billed its share of an epoch's tokens by the rows it takes (a full batch, or the
  last partial one). An epoch's steps sum to exactly the epoch's tokens, so a
  finished job is billed what the estimate said, whatever the node claims. An
  evaluation is billed the validation set's tokens, likewise counted here.
- **Loss, learning rate, speed, ETA, device.** Shown to the buyer, not billed.
- **Checkpoints and models** are recorded only from committed uploads, whose bytes
  the control plane holds and hashed (marketplace/assignments/blobs.py).
"""

from __future__ import annotations

import logging
import math
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from core import ports
from core.errors import IdempotencyConflict, InvalidInput
from core.ports import UsageRecord
from runtime import events as ev
from runtime.models import TrainingRun
from runtime.services import (
    PROGRESS_EVENTS_PER_RUN,
    USAGE_SOURCE,
    _append,
    training_run_cancel,
    training_run_submit,
)
from runtime.spec import WorkSpec

logger = logging.getLogger(__name__)


# --- the plan: what the control plane knows of the steps ------------------------------


def training_plan(*, spec: dict[str, Any]) -> dict[str, int]:
    """The run's shape, counted here from the job's own dataset: rows per epoch,
    tokens per epoch, steps per epoch and in all, the batch size and an evaluation's
    tokens. The same rows the trainer builds (runtime.datasets.rows_build)."""
    from runtime.datasets import dataset_load, rows_build
    from runtime.registry import model_info

    work = WorkSpec.from_dict(spec)
    params = work.hyperparameters
    info = model_info(work.base_model)
    max_length = min(params.max_seq_length or info.context_length, info.context_length)
    _, examples = dataset_load(
        work.training_file,
        model=work.base_model,
        format=work.training_format,
        train_on_inputs=params.train_on_inputs,
    )
    rows = rows_build(examples, max_length=max_length, packing=params.packing)
    eval_tokens = 0
    if work.validation_file and params.n_evals:
        _, held_out = dataset_load(
            work.validation_file, model=work.base_model, train_on_inputs=params.train_on_inputs
        )
        eval_tokens = sum(
            len(r.input_ids)
            for r in rows_build(held_out, max_length=max_length, packing=params.packing)
        )
    per_epoch = math.ceil(len(rows) / params.batch_size)
    return {
        "rows": len(rows),
        "tokens_per_epoch": sum(len(r.input_ids) for r in rows),
        "steps_per_epoch": per_epoch,
        "total_steps": per_epoch * params.epochs,
        "batch_size": params.batch_size,
        "eval_tokens": eval_tokens,
    }


def step_tokens(plan: dict[str, int], step: int) -> int:
    """Step ``step``'s (1-based) share of its epoch's tokens, by the rows it takes:
    an epoch's steps sum to exactly ``tokens_per_epoch``."""
    if not 1 <= step <= plan["total_steps"]:
        raise InvalidInput(
            f"step: {step} is outside the run's 1 to {plan['total_steps']} steps",
            details={"field": "step"},
        )
    rows, tokens, batch = plan["rows"], plan["tokens_per_epoch"], plan["batch_size"]
    index = (step - 1) % plan["steps_per_epoch"]
    start, end = index * batch, min(rows, (index + 1) * batch)
    return tokens * end // rows - tokens * start // rows


# --- the run's record -------------------------------------------------------------------


def _run(job_id: str) -> TrainingRun:
    return TrainingRun.objects.get(job_id=job_id)


def _usage(run: TrainingRun, record_id: str, kind: str, quantity: int) -> None:
    statuses = ports.get(ports.UsagePort).record(
        [
            UsageRecord(
                id=record_id,
                source=USAGE_SOURCE,
                type=kind,
                organization_id=run.organization_id,
                subject_kind="job",
                subject_id=run.job_id,
                time=timezone.now(),
                quantity=quantity,
                dimensions={
                    "model": run.spec["base_model"],
                    "training_type": WorkSpec.from_dict(run.spec).hyperparameters.training_type,
                },
            )
        ]
    )
    if statuses and statuses[0].startswith("rejected"):
        logger.error("usage %s was rejected: %s", record_id, statuses[0])


def node_run_submit(*, spec: dict[str, Any]) -> None:
    """The run's record, made on its first lease; a later lease (the run resuming
    elsewhere) changes only the lease its spec names."""
    work = WorkSpec.from_dict(spec)
    run = TrainingRun.objects.filter(job_id=work.job_id).first()
    if run is None:
        training_run_submit(spec=spec)
        return
    canonical = work.to_dict()
    if {**run.spec, "lease": None} != {**canonical, "lease": None}:
        raise IdempotencyConflict(
            f"job {work.job_id} was submitted before with a different spec",
            details={"field": "job_id"},
        )
    TrainingRun.objects.filter(pk=run.pk).update(spec=canonical)


def node_run_claimed(*, job_id: str, attempt: int, node_id: int) -> None:
    """A node claimed the run: it is running, held by that node at ``attempt``."""
    TrainingRun.objects.filter(job_id=job_id).exclude(state__in=TrainingRun.FINISHED).update(
        state=TrainingRun.State.RUNNING,
        claimed_by=f"node-{node_id}",
        attempt=attempt,
        heartbeat_at=timezone.now(),
        error="",
    )


def node_run_started(*, job_id: str, attempt: int, details: dict[str, Any]) -> None:
    run = _run(job_id)
    TrainingRun.objects.filter(pk=run.pk).update(
        total_steps=details["total_steps"], checkpoint_step=details["resumed_from_step"]
    )
    _append(
        run,
        ev.TrainingStarted(
            attempt=attempt,
            worker=run.claimed_by,
            total_steps=details["total_steps"],
            resumed_from_step=details["resumed_from_step"],
            examples=details["examples"],
            tokens_per_epoch=details["tokens_per_epoch"],
            world_size=details["world_size"],
            device=details["device"],
            trainable_parameters=details["trainable_parameters"],
        ),
    )


def node_run_stepped(
    *, job_id: str, attempt: int, report: dict[str, Any], plan: dict[str, int]
) -> None:
    """Bill the step (its tokens from the plan, see the module doc) and show it."""
    run = _run(job_id)
    step = int(report["step"])
    total = plan["total_steps"]
    _usage(run, f"{job_id}:{step}:train", "tokens.training", step_tokens(plan, step))
    every = max(1, total // PROGRESS_EVENTS_PER_RUN)
    if step % every == 0 or step in (1, total):
        _append(
            run,
            ev.TrainingProgressed(
                attempt=attempt,
                step=step,
                total_steps=total,
                epoch=(step - 1) // plan["steps_per_epoch"] + 1,
                loss=round(float(report["loss"]), 6),
                learning_rate=float(report.get("learning_rate") or 0.0),
                tokens_per_second=round(float(report.get("tokens_per_second") or 0.0), 1),
                eta_seconds=round(float(report.get("eta_seconds") or 0.0), 1),
            ),
        )
    TrainingRun.objects.filter(pk=run.pk).update(steps_done=step, heartbeat_at=timezone.now())


def node_run_evaluated(
    *, job_id: str, attempt: int, step: int, eval_loss: float, plan: dict[str, int]
) -> None:
    run = _run(job_id)
    tokens = plan["eval_tokens"]
    _usage(run, f"{job_id}:{step}:eval", "tokens.evaluation", tokens)
    _append(
        run,
        ev.TrainingEvaluated(
            attempt=attempt, step=step, eval_loss=round(eval_loss, 6), tokens=tokens
        ),
    )


def node_run_checkpointed(
    *, job_id: str, attempt: int, step: int, location: str, final: bool
) -> None:
    run = _run(job_id)
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint_step=step)
    _append(run, ev.CheckpointSaved(attempt=attempt, step=step, location=location, final=final))


def node_run_succeeded(
    *,
    job_id: str,
    attempt: int,
    steps: int,
    final_loss: float | None,
    model_location: str,
    merged_location: str,
) -> None:
    run = _run(job_id)
    TrainingRun.objects.filter(pk=run.pk).update(
        state=TrainingRun.State.SUCCEEDED,
        finished_at=timezone.now(),
        heartbeat_at=None,
        model_location=model_location,
        steps_done=steps,
    )
    _append(
        run,
        ev.TrainingSucceeded(
            attempt=attempt,
            steps=steps,
            final_loss=final_loss,
            model_location=model_location,
            merged_location=merged_location,
        ),
    )


def node_run_failed(*, job_id: str, attempt: int, error: str, will_retry: bool) -> None:
    """``will_retry``: the node was lost, the run goes back to wait for another
    (resumed from its checkpoint); else it failed for good (the trainer failed)."""
    run = _run(job_id)
    if will_retry:
        TrainingRun.objects.filter(pk=run.pk).update(
            state=TrainingRun.State.QUEUED, claimed_by="", error=error[:2000]
        )
    else:
        TrainingRun.objects.filter(pk=run.pk).update(
            state=TrainingRun.State.FAILED, finished_at=timezone.now(), error=error[:2000]
        )
    _append(run, ev.TrainingFailed(attempt=attempt, error=error[:2000], will_retry=will_retry))


def node_run_stopped(*, job_id: str, attempt: int) -> None:
    """The node stopped the run on request: a cancel (TrainingCancelled, the job ends)
    or its lease ending under it (the run waits for the next lease, no event: the
    lease's own end tells the job)."""
    run = _run(job_id)
    if run.cancel_requested_at is None:
        TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.QUEUED, claimed_by="")
        return
    TrainingRun.objects.filter(pk=run.pk).update(
        state=TrainingRun.State.CANCELLED, finished_at=timezone.now(), heartbeat_at=None
    )
    _append(
        run,
        ev.TrainingCancelled(
            attempt=attempt, step=run.steps_done, checkpoint_step=run.checkpoint_step
        ),
    )


def node_run_cancel(*, job_id: str) -> None:
    with transaction.atomic():
        if TrainingRun.objects.filter(job_id=job_id).exists():
            training_run_cancel(job_id=job_id)


# --- artifacts ----------------------------------------------------------------------------


def artifact_unpack(*, archive: Path, sha256: str) -> str:
    """Unpack a node's uploaded tar (a checkpoint or a model directory) into artifact
    storage under ``unpacked/<sha256>`` and return its location (a directory the
    job's records name; inference loads adapters from it). Content addressed, so a
    repeat is a no-op. Tar's ``data`` filter refuses links out of the directory,
    absolute paths and device files: the archive comes from a provider's node."""
    from runtime.storage import default_storage

    storage = default_storage()
    key = f"unpacked/{sha256}"
    if storage.exists(key):
        return storage.locate(key)
    scratch = Path(tempfile.mkdtemp(prefix="tandem-unpack-"))
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            tar.extractall(scratch / "content", filter="data")
        storage.put_dir(scratch / "content", key)
    except (tarfile.TarError, OSError) as exc:
        raise InvalidInput(f"upload {sha256[:12]}: not a readable tar archive: {exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return storage.locate(key)
