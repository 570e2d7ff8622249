"""Events of buyer workloads, appended to the core event store.

Stream ``finetune_job`` (one per job, id ``finetune_job:<ft-id>``) and
``deployment`` (one per deployment). Other apps follow these by type: the runtime
sees a cancel request, billing may close a job's invoice on its terminal event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from core.eventstore import NewEvent

JOB_STREAM = "finetune_job"
DEPLOYMENT_STREAM = "deployment"


def job_stream_id(job_id: str) -> str:
    return f"{JOB_STREAM}:{job_id}"


def deployment_stream_id(deployment_id: str) -> str:
    return f"{DEPLOYMENT_STREAM}:{deployment_id}"


@dataclass(frozen=True)
class _Event:
    type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    def to_new_event(self) -> NewEvent:
        return NewEvent(type=self.type, payload=asdict(self), schema_version=self.schema_version)


@dataclass(frozen=True)
class FineTuneJobCreated(_Event):
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
class FineTuneJobStarted(_Event):
    type: ClassVar[str] = "FineTuneJobStarted"
    job_id: str
    lease_ref: str


@dataclass(frozen=True)
class FineTuneJobCancelRequested(_Event):
    type: ClassVar[str] = "FineTuneJobCancelRequested"
    job_id: str
    status_before: str


@dataclass(frozen=True)
class FineTuneJobFinished(_Event):
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
class DeploymentStarted(_Event):
    type: ClassVar[str] = "DeploymentStarted"
    deployment_id: str
    model: str
    organization_id: int | None


@dataclass(frozen=True)
class DeploymentStopped(_Event):
    type: ClassVar[str] = "DeploymentStopped"
    deployment_id: str
    reason: str
    requests_served: int
