"""Writes of the runtime's record of training runs: submitting and cancelling them.

Training itself runs on the leased node, in a process of its agent (``python -m
runtime.launch``, see providers/agent_train.py); no control-plane process trains.
The record of a run on a node (its reports turned into events and usage) is
runtime/node_training.py. Nothing here imports torch (the web process imports it).

- ``training_run_submit`` is idempotent on the job id.
- Usage ids name the job and step (``ft-1:12:train``), never the attempt or the
  node, so steps redone after resuming from a checkpoint are recorded once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from core import ports
from core.errors import ConcurrencyConflict, IdempotencyConflict, NotFound
from core.eventstore import NewEvent, event_append
from core.ports import UsageRecord
from runtime import events as ev
from runtime.models import TrainingRun
from runtime.spec import WorkSpec

logger = logging.getLogger(__name__)

USAGE_SOURCE = "runtime"
PROGRESS_EVENTS_PER_RUN = 100


def _append(run: TrainingRun, event: Any) -> None:
    """Append to the run's stream at its current version; only this run's holder
    writes there, so a conflict is a rare race with ``training_run_cancel``."""
    stream = ev.training_stream_id(run.job_id)
    for _ in range(5):
        try:
            event_append(
                stream_type=ev.STREAM_TYPE,
                stream_id=stream,
                expected_version=None,
                events=[NewEvent(event.type, event.payload(), event.schema_version)],
                tenant_id=run.organization_id,
                metadata={"actor": "runtime"},
            )
            return
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict(f"could not append to {stream}")


# --- submit, cancel --------------------------------------------------------


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


def training_run_cancel(*, job_id: str, organization_id: int | None = None) -> TrainingRun:
    """Ask a run to stop. A queued run is cancelled at once; a running one is killed
    by its node (the assignment is told to stop) and keeps its last checkpoint; it is
    recorded cancelled when the node reports the stop. Cancelling twice is a no-op."""
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


def inference_usage_sink(
    *, organization_id: int, deployment_id: str, model: str
) -> Callable[[str, int, int], None]:
    """A usage sink for an engine serving one buyer's deployment: each request's
    prompt and completion tokens as two usage events named after the request."""
    usage = ports.get(ports.UsagePort)

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
