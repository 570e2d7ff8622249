"""The runtime's event types: one stream per training job, ``training:<job id>``.

The fine-tune job API reads these to show a job's state, progress (step, loss,
eval loss, tokens/s, ETA) and checkpoints. Every event carries the run's
``attempt``: a job resumed after a crash appends ``TrainingResumed`` and goes on
counting steps from its checkpoint, so a step may appear twice in a stream, once
per attempt that ran it (the bill counts it once: usage ids name the step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

STREAM_TYPE = "training"


def training_stream_id(job_id: str) -> str:
    return f"training:{job_id}"


@dataclass(frozen=True, slots=True)
class _Event:
    type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    def payload(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TrainingQueued(_Event):
    type: ClassVar[str] = "TrainingQueued"
    job_id: str
    organization_id: int
    base_model: str
    training_type: str
    hyperparameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TrainingStarted(_Event):
    type: ClassVar[str] = "TrainingStarted"
    attempt: int
    worker: str
    total_steps: int
    resumed_from_step: int  # 0 on a fresh start
    examples: int
    tokens_per_epoch: int
    world_size: int
    device: str
    trainable_parameters: int


@dataclass(frozen=True, slots=True)
class TrainingProgressed(_Event):
    type: ClassVar[str] = "TrainingProgressed"
    attempt: int
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float


@dataclass(frozen=True, slots=True)
class TrainingEvaluated(_Event):
    type: ClassVar[str] = "TrainingEvaluated"
    attempt: int
    step: int
    eval_loss: float
    tokens: int


@dataclass(frozen=True, slots=True)
class CheckpointSaved(_Event):
    type: ClassVar[str] = "CheckpointSaved"
    attempt: int
    step: int
    location: str
    final: bool


@dataclass(frozen=True, slots=True)
class TrainingSucceeded(_Event):
    type: ClassVar[str] = "TrainingSucceeded"
    attempt: int
    steps: int
    final_loss: float | None
    model_location: str
    merged_location: str


@dataclass(frozen=True, slots=True)
class TrainingCancelled(_Event):
    type: ClassVar[str] = "TrainingCancelled"
    attempt: int
    step: int  # the last step run
    checkpoint_step: int  # the checkpoint kept (0: none)


@dataclass(frozen=True, slots=True)
class TrainingFailed(_Event):
    type: ClassVar[str] = "TrainingFailed"
    attempt: int
    error: str
    will_retry: bool
