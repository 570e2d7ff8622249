"""Writes of the runtime: submitting, claiming, running and cancelling training runs.

Nothing here imports torch at import time (the web process and the broker import
this module); ``training_run_execute`` imports the trainer when it runs.

At-least-once delivery, exactly-once effects:

- ``training_run_submit`` is idempotent on the job id (a redelivered message finds
  the run it created).
- ``training_run_claim`` is a conditional update: a run is taken when it is queued,
  or running with a heartbeat older than the claim timeout (its worker died). Zero
  rows updated means someone else has it, and the delivery does nothing.
- Every step's heartbeat is conditional on still holding the claim (worker and
  attempt); a worker that lost its claim stops at the next step and writes nothing
  more.
- Usage ids name the job and step (``ft-1:12:train``), never the attempt or the
  worker, so steps redone after resuming from a checkpoint are recorded once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from core import ports
from core.errors import ApplicationError, ConcurrencyConflict, IdempotencyConflict, NotFound
from core.eventstore import NewEvent, event_append, stream_version
from core.ports import UsageRecord
from runtime import events as ev
from runtime.models import TrainingRun
from runtime.spec import WorkSpec

if TYPE_CHECKING:
    from runtime.storage import ArtifactStorage
    from runtime.trainer import StepReport

logger = logging.getLogger(__name__)

USAGE_SOURCE = "runtime"
PROGRESS_EVENTS_PER_RUN = 100


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def claim_timeout() -> timedelta:
    return timedelta(seconds=getattr(settings, "RUNTIME_CLAIM_TIMEOUT_SECONDS", 300))


def _append(run: TrainingRun, event: Any) -> None:
    """Append to the run's stream at its current version; only this run's holder
    writes there, so a conflict is a rare race with ``training_run_cancel``."""
    stream = ev.training_stream_id(run.job_id)
    for _ in range(5):
        try:
            event_append(
                stream_type=ev.STREAM_TYPE,
                stream_id=stream,
                expected_version=stream_version(stream),
                events=[NewEvent(event.type, event.payload(), event.schema_version)],
                tenant_id=run.organization_id,
                metadata={"actor": "runtime"},
            )
            return
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict(f"could not append to {stream}")


# --- submit, claim, cancel --------------------------------------------------------


@transaction.atomic
def training_run_submit(*, spec: dict[str, Any]) -> TrainingRun:
    """Create the run for a job (checked spec), or return the one a first delivery
    made. The same job id with a different spec is refused."""
    work = WorkSpec.from_dict(spec)
    canonical = work.to_dict()
    run, created = TrainingRun.objects.get_or_create(
        job_id=work.job_id,
        defaults={"organization_id": work.organization_id, "spec": canonical},
    )
    if not created:
        if run.spec != canonical:
            raise IdempotencyConflict(
                f"job {work.job_id} was submitted before with a different spec",
                details={"field": "job_id"},
            )
        return run
    _append(
        run,
        ev.TrainingQueued(
            job_id=work.job_id,
            organization_id=work.organization_id,
            base_model=work.base_model,
            training_type=work.hyperparameters.training_type,
            hyperparameters=work.hyperparameters.to_dict(),
        ),
    )
    return run


def training_run_claim(
    *, job_id: str, worker: str, now: datetime | None = None, timeout: timedelta | None = None
) -> TrainingRun | None:
    """Take the run if it is free (queued, or held by a worker silent for longer than
    ``timeout``). None: someone else holds it, or it is finished or cancelled."""
    now = now or timezone.now()
    stale = now - (timeout or claim_timeout())
    with transaction.atomic():
        # A run cancelled while its worker was gone: nobody will stop it, so do it here.
        abandoned = TrainingRun.objects.filter(
            job_id=job_id,
            state="running",
            heartbeat_at__lt=stale,
            cancel_requested_at__isnull=False,
        )
        for run in abandoned.select_for_update():
            run.state = TrainingRun.State.CANCELLED
            run.finished_at = now
            run.save(update_fields=["state", "finished_at"])
            _append(
                run,
                ev.TrainingCancelled(
                    attempt=run.attempt, step=run.steps_done, checkpoint_step=run.checkpoint_step
                ),
            )
        taken = (
            TrainingRun.objects.filter(job_id=job_id, cancel_requested_at=None)
            .filter(Q(state=TrainingRun.State.QUEUED) | Q(state="running", heartbeat_at__lt=stale))
            .update(
                state=TrainingRun.State.RUNNING,
                claimed_by=worker,
                heartbeat_at=now,
                error="",
                attempt=F("attempt") + 1,
            )
        )
    if taken == 0:
        return None
    return TrainingRun.objects.get(job_id=job_id)


def training_run_cancel(*, job_id: str, organization_id: int | None = None) -> TrainingRun:
    """Ask a run to stop. A queued run is cancelled at once; a running one stops at
    its next step and keeps its last checkpoint. Cancelling twice is a no-op."""
    now = timezone.now()
    with transaction.atomic():
        query = TrainingRun.objects.select_for_update().filter(job_id=job_id)
        if organization_id is not None:
            query = query.filter(organization_id=organization_id)
        run = query.first()
        if run is None:
            raise NotFound(f"no training run {job_id}", details={"field": "job_id"})
        if run.state in TrainingRun.FINISHED or run.cancel_requested_at is not None:
            return run
        run.cancel_requested_at = now
        fields = ["cancel_requested_at"]
        if run.state == TrainingRun.State.QUEUED:
            run.state = TrainingRun.State.CANCELLED
            run.finished_at = now
            fields += ["state", "finished_at"]
        run.save(update_fields=fields)
        if run.state == TrainingRun.State.CANCELLED:
            _append(
                run,
                ev.TrainingCancelled(
                    attempt=run.attempt, step=run.steps_done, checkpoint_step=run.checkpoint_step
                ),
            )
    return run


# --- running ----------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    job_id: str
    worker: str
    attempt: int

    def query(self):
        return TrainingRun.objects.filter(
            job_id=self.job_id, claimed_by=self.worker, attempt=self.attempt, state="running"
        )


class RunReporter:
    """The trainer's reporter for a claimed run: progress and checkpoints as events,
    tokens as usage, a heartbeat per step that also carries cancellation back."""

    def __init__(self, run: TrainingRun, spec: WorkSpec, held: _Held, storage: ArtifactStorage):
        self.run = run
        self.spec = spec
        self.held = held
        self.storage = storage
        self.total_steps = 0
        self.progress_every = 1
        self.stop: str | None = None
        self.last_loss: float | None = None
        self.usage = ports.get(ports.USAGE)
        self.dimensions: dict[str, str | int] = {
            "model": spec.base_model,
            "training_type": spec.hyperparameters.training_type,
        }

    def _usage(self, record_id: str, kind: str, quantity: int) -> None:
        statuses = self.usage.record(
            [
                UsageRecord(
                    id=record_id,
                    source=USAGE_SOURCE,
                    type=kind,
                    organization_id=self.spec.organization_id,
                    subject_kind="job",
                    subject_id=self.spec.job_id,
                    time=timezone.now(),
                    quantity=quantity,
                    dimensions=self.dimensions,
                )
            ]
        )
        if statuses and statuses[0].startswith("rejected"):
            logger.error("usage %s was rejected: %s", record_id, statuses[0])

    def started(self, *, total_steps: int, resumed_from: int, details: dict[str, Any]) -> None:
        self.total_steps = total_steps
        self.progress_every = max(1, total_steps // PROGRESS_EVENTS_PER_RUN)
        self.held.query().update(total_steps=total_steps, checkpoint_step=resumed_from)
        _append(
            self.run,
            ev.TrainingStarted(
                attempt=self.held.attempt,
                worker=self.held.worker,
                total_steps=total_steps,
                resumed_from_step=resumed_from,
                examples=details["examples"],
                tokens_per_epoch=details["tokens_per_epoch"],
                world_size=details["world_size"],
                device=details["device"],
                trainable_parameters=details["trainable_parameters"],
            ),
        )

    def stepped(self, report: StepReport) -> None:
        self.last_loss = report.loss
        self._usage(f"{self.spec.job_id}:{report.step}:train", "tokens.training", report.tokens)
        if report.step % self.progress_every == 0 or report.step in (1, report.total_steps):
            _append(
                self.run,
                ev.TrainingProgressed(
                    attempt=self.held.attempt,
                    step=report.step,
                    total_steps=report.total_steps,
                    epoch=report.epoch,
                    loss=round(report.loss, 6),
                    learning_rate=report.learning_rate,
                    tokens_per_second=round(report.tokens_per_second, 1),
                    eta_seconds=round(report.eta_seconds, 1),
                ),
            )
        self._heartbeat(steps_done=report.step)

    def _heartbeat(self, **fields: Any) -> None:
        held = self.held.query().update(heartbeat_at=timezone.now(), **fields)
        if held == 0:
            self.stop = "lost claim"
            return
        if TrainingRun.objects.filter(
            job_id=self.held.job_id, cancel_requested_at__isnull=False
        ).exists():
            self.stop = "cancelled"

    def evaluated(self, *, step: int, loss: float, tokens: int) -> None:
        self._usage(f"{self.spec.job_id}:{step}:eval", "tokens.evaluation", tokens)
        _append(
            self.run,
            ev.TrainingEvaluated(
                attempt=self.held.attempt, step=step, eval_loss=round(loss, 6), tokens=tokens
            ),
        )

    def checkpointed(self, *, step: int, key: str, final: bool, gpu_seconds: float) -> None:
        self.held.query().update(checkpoint_step=step)
        _append(
            self.run,
            ev.CheckpointSaved(
                attempt=self.held.attempt, step=step, location=self.storage.locate(key), final=final
            ),
        )
        lease = self.spec.lease
        if lease is not None and gpu_seconds >= 0.5:
            self.usage.record(
                [
                    UsageRecord(
                        id=f"{self.spec.job_id}:{step}:gpu",
                        source=USAGE_SOURCE,
                        type="gpu.seconds",
                        organization_id=self.spec.organization_id,
                        subject_kind="lease",
                        subject_id=lease.id,
                        time=timezone.now(),
                        quantity=round(gpu_seconds),
                        dimensions={
                            "gpu_model": lease.gpu_model,
                            "provider": lease.provider_organization_id,
                            "lease_price_micros_per_hour": lease.price_micros_per_hour,
                        },
                    )
                ]
            )

    def stop_reason(self) -> str | None:
        return self.stop


def training_run_execute(
    *,
    job_id: str,
    worker: str | None = None,
    storage: ArtifactStorage | None = None,
    now: datetime | None = None,
    timeout: timedelta | None = None,
) -> str:
    """Claim the run and train it to the end (resuming from its last checkpoint).
    Returns what happened: ``succeeded``, ``cancelled``, ``lost claim`` or
    ``skipped`` (not ours to run). Errors other than bad input are re-raised after
    the claim is released, so the broker's retry resumes the run."""
    from runtime.storage import default_storage
    from runtime.trainer import train

    worker = worker or worker_name()
    run = training_run_claim(job_id=job_id, worker=worker, now=now, timeout=timeout)
    if run is None:
        return "skipped"
    held = _Held(job_id=run.job_id, worker=worker, attempt=run.attempt)
    storage = storage or default_storage()
    spec = WorkSpec.from_dict(run.spec)
    reporter = RunReporter(run, spec, held, storage)
    try:
        result = train(spec, storage=storage, reporter=reporter)
    except ApplicationError as exc:
        # Bad input (a dataset the checks refuse, an unknown model): retrying will
        # not help, so the run fails now.
        _finish(run, held, TrainingRun.State.FAILED, error=exc.message)
        _append(run, ev.TrainingFailed(attempt=held.attempt, error=exc.message, will_retry=False))
        return "failed"
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:2000]
        held.query().update(state=TrainingRun.State.QUEUED, claimed_by="", error=message)
        _append(run, ev.TrainingFailed(attempt=held.attempt, error=message, will_retry=True))
        raise
    if result.status == "succeeded":
        location = storage.locate(result.final_key)
        if _finish(run, held, TrainingRun.State.SUCCEEDED, model_location=location):
            _append(
                run,
                ev.TrainingSucceeded(
                    attempt=held.attempt,
                    steps=result.steps,
                    final_loss=reporter.last_loss,
                    model_location=location,
                    merged_location=storage.locate(result.merged_key) if result.merged_key else "",
                ),
            )
        return "succeeded"
    if result.reason == "cancelled":
        checkpoint = TrainingRun.objects.get(job_id=job_id).checkpoint_step
        if _finish(run, held, TrainingRun.State.CANCELLED):
            _append(
                run,
                ev.TrainingCancelled(
                    attempt=held.attempt, step=result.steps, checkpoint_step=checkpoint
                ),
            )
        return "cancelled"
    return result.reason or "stopped"


def _finish(run: TrainingRun, held: _Held, state: str, **fields: Any) -> bool:
    return (
        held.query().update(state=state, finished_at=timezone.now(), heartbeat_at=None, **fields)
        == 1
    )


def training_run_fail(*, job_id: str, error: str) -> None:
    """The broker gave up retrying: the run is failed for good."""
    run = TrainingRun.objects.filter(job_id=job_id).first()
    if run is None or run.state in TrainingRun.FINISHED:
        return
    updated = TrainingRun.objects.filter(pk=run.pk, state=TrainingRun.State.QUEUED).update(
        state=TrainingRun.State.FAILED, finished_at=timezone.now(), error=error[:2000]
    )
    if updated:
        _append(run, ev.TrainingFailed(attempt=run.attempt, error=error, will_retry=False))


def inference_usage_sink(
    *, organization_id: int, deployment_id: str, model: str
) -> Callable[[str, int, int], None]:
    """A usage sink for an engine serving one buyer's deployment: each request's
    prompt and completion tokens as two usage events named after the request."""
    usage = ports.get(ports.USAGE)

    def record(request_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        now = timezone.now()
        usage.record(
            [
                UsageRecord(
                    id=f"{deployment_id}:{request_id}:{kind}",
                    source=f"{USAGE_SOURCE}/inference",
                    type=f"tokens.{kind}",
                    organization_id=organization_id,
                    subject_kind="deployment",
                    subject_id=deployment_id,
                    time=now,
                    quantity=quantity,
                    dimensions={"model": model},
                )
                for kind, quantity in (("prompt", prompt_tokens), ("completion", completion_tokens))
            ]
        )

    return record
