"""Reads of the runtime: a run and its event stream (progress, checkpoints)."""

from __future__ import annotations

from core.eventstore import RecordedEvent, stream_read
from runtime import events as ev
from runtime.models import TrainingRun


def training_run_get(*, job_id: str, organization_id: int | None = None) -> TrainingRun | None:
    query = TrainingRun.objects.filter(job_id=job_id)
    if organization_id is not None:
        query = query.filter(organization_id=organization_id)
    return query.first()


def training_events(*, job_id: str, after_version: int = 0) -> list[RecordedEvent]:
    return stream_read(ev.training_stream_id(job_id), after_version=after_version)


def training_losses(*, job_id: str) -> list[tuple[int, float]]:
    """(step, loss) of the progress events, the latest attempt's value for a step."""
    losses: dict[int, float] = {}
    for event in training_events(job_id=job_id):
        if event.type == ev.TrainingProgressed.type:
            losses[event.payload["step"]] = event.payload["loss"]
    return sorted(losses.items())
