"""Events of buyer workloads, appended to the core event store.

Stream ``finetune_job`` (one per job, id ``finetune_job:<ft-id>``) and
``deployment`` (one per deployment). Other apps follow these by type: the runtime
sees a cancel request, billing may close a job's invoice on its terminal event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from core.eventstore import DomainEvent, stream_id

JOB_STREAM = "finetune_job"
DEPLOYMENT_STREAM = "deployment"


def job_stream_id(job_id: str) -> str:
    return stream_id(JOB_STREAM, job_id)


def deployment_stream_id(deployment_id: str) -> str:
    return stream_id(DEPLOYMENT_STREAM, deployment_id)


@dataclass(frozen=True)
class FineTuneJobCreated(DomainEvent):
    type: ClassVar[str] = "FineTuneJobCreated"
    job_id: str
    organization_id: int
    model: str
    training_file: str
    validation_file: str | None
    method: str
    training_type: str
    hyperparameters: dict[str, Any]
    estimate_micros: int
    currency: str
    order_ref: str


@dataclass(frozen=True)
class FineTuneJobStarted(DomainEvent):
    type: ClassVar[str] = "FineTuneJobStarted"
    job_id: str
    lease_ref: str


@dataclass(frozen=True)
class FineTuneJobCancelRequested(DomainEvent):
    type: ClassVar[str] = "FineTuneJobCancelRequested"
    job_id: str
    status_before: str


@dataclass(frozen=True)
class FineTuneJobFinished(DomainEvent):
    """The job reached a terminal status: succeeded, failed or cancelled."""

    type: ClassVar[str] = "FineTuneJobFinished"
    job_id: str
    organization_id: int
    status: str
    steps_completed: int
    trained_tokens: int
    fine_tuned_model: str | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class DeploymentStarted(DomainEvent):
    type: ClassVar[str] = "DeploymentStarted"
    deployment_id: str
    model: str
    organization_id: int | None


@dataclass(frozen=True)
class DeploymentStopped(DomainEvent):
    type: ClassVar[str] = "DeploymentStopped"
    deployment_id: str
    reason: str
    requests_served: int
