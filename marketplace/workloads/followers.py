"""The workloads follower: lease events from the order book and training events
from the runtime, turned into job state, the events and checkpoints the API lists.

It keeps its position in the same transaction as its effects (core.followers), so
each event takes effect once. Each handler is also idempotent on its own (a job
starts only from ``queued``; a projected event carries its source position), which
keeps a replay from position 0 harmless.
"""

from __future__ import annotations

import logging
from typing import Any

from core.eventstore import RecordedEvent
from core.followers import Follower, register
from marketplace.workloads import services

logger = logging.getLogger(__name__)

# The order book's lease events (marketplace/events.py) and the runtime's training
# events (runtime/events.py), by type.
LEASE_STARTED = "LeaseStarted"
LEASE_INTERRUPTED = frozenset({"LeasePreempted", "LeaseFailed"})
TRAINING_PROGRESS = frozenset({"TrainingStarted", "TrainingStepCompleted", "TrainingEvaluated"})
TRAINING_CHECKPOINT = "TrainingCheckpointSaved"
TRAINING_FINISHED = {
    "TrainingSucceeded": "succeeded",
    "TrainingFailed": "failed",
    "TrainingCancelled": "cancelled",
}


def _workload(payload: dict[str, Any]) -> tuple[str, str] | None:
    workload = payload.get("workload") or {}
    kind = workload.get("kind") or payload.get("workload_kind")
    ident = workload.get("id") or payload.get("workload_id")
    if kind and ident:
        return str(kind), str(ident)
    return None


def _progress_message(event_type: str, payload: dict[str, Any]) -> tuple[str, str]:
    if event_type == "TrainingStarted":
        return "training_start", f"Training started: {payload.get('total_steps', '?')} steps"
    if event_type == "TrainingEvaluated":
        return "epoch_complete", f"Step {payload.get('step')}: eval loss {payload.get('eval_loss')}"
    parts = [f"Step {payload.get('step')}/{payload.get('total_steps', '?')}"]
    if payload.get("loss") is not None:
        parts.append(f"training loss={float(payload['loss']):.4f}")
    if payload.get("tokens_per_second") is not None:
        parts.append(f"{float(payload['tokens_per_second']):.0f} tokens/s")
    if payload.get("eta_seconds") is not None:
        parts.append(f"ETA {int(payload['eta_seconds'])}s")
    return "training_step", ", ".join(parts)


class WorkloadsFollower(Follower):
    name = "workloads.jobs"
    stream_types = None  # lease and training streams; filtered by type below
    batch_size = 200

    def handle(self, event: RecordedEvent) -> None:
        payload = event.payload
        if event.type == LEASE_STARTED:
            workload = _workload(payload)
            if workload and workload[0] == "fine_tune":
                services.finetune_job_start(
                    job_id=workload[1], lease_ref=str(payload.get("lease_id", ""))
                )
            return
        job_id = payload.get("job_id")
        if not job_id:
            return
        if event.type in TRAINING_PROGRESS:
            kind, message = _progress_message(event.type, payload)
            services.finetune_job_progress(
                job_id=job_id,
                kind=kind,
                message=message,
                at=event.recorded_at,
                source_position=event.position,
                step=payload.get("step"),
                total_steps=payload.get("total_steps"),
                data={
                    k: payload[k]
                    for k in (
                        "step",
                        "total_steps",
                        "loss",
                        "eval_loss",
                        "tokens_per_second",
                        "eta_seconds",
                        "token_count",
                        "learning_rate",
                    )
                    if k in payload
                },
            )
        elif event.type == TRAINING_CHECKPOINT:
            services.finetune_checkpoint_record(
                job_id=job_id,
                step=int(payload["step"]),
                at=event.recorded_at,
                source_position=event.position,
                adapter_path=payload.get("adapter_path") or payload.get("path") or "",
                merged_path=payload.get("merged_path") or "",
                is_final=bool(payload.get("final")),
                metrics={k: payload[k] for k in ("loss", "eval_loss") if k in payload},
            )
        elif event.type in TRAINING_FINISHED:
            services.finetune_job_finish(
                job_id=job_id,
                status=TRAINING_FINISHED[event.type],
                at=event.recorded_at,
                source_position=event.position,
                steps_completed=payload.get("steps_completed", payload.get("step")),
                trained_tokens=payload.get("trained_tokens"),
                error=(
                    {
                        "code": payload.get("code", "training_failed"),
                        "message": payload.get("error", ""),
                        "param": None,
                    }
                    if event.type == "TrainingFailed"
                    else None
                ),
            )


register(WorkloadsFollower())
