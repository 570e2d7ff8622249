"""The workloads follower: lease events from the order book and training events
from the runtime, turned into job state, the events and checkpoints the API lists,
and into inference deployments' leases (recorded when one starts; the deployment
stopped when its lease ends under it).

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
from marketplace.workloads import inference, jobs

logger = logging.getLogger(__name__)

# The order book's lease events (marketplace/events.py, streams ``lease``) and the
# runtime's training events (runtime/events.py, streams ``training:<job id>``).
LEASE_STREAM = "lease"
TRAINING_STREAM = "training"
LEASE_STARTED = "LeaseStarted"
LEASE_INTERRUPTED = frozenset({"LeasePreempted", "LeaseFailed"})
# Every way a lease closes. Closed-lease events do not name their workload, so an
# inference deployment's lease is found by its id.
LEASE_CLOSED = frozenset({"LeaseEnded", "LeasePreempted", "LeaseFailed", "LeaseCancelled"})
# The workload id of a dedicated endpoint replica's raw order (dedicated.py).
DEDICATED_PREFIX = "endpoint:"


def _job_id(event: RecordedEvent) -> str:
    return event.stream_id.split(":", 1)[1] if ":" in event.stream_id else ""


def _progress(event: RecordedEvent) -> tuple[str, str, dict[str, Any]] | None:
    p = event.payload
    if event.type == "TrainingStarted":
        resumed = p.get("resumed_from_step") or 0
        start = f"resumed from step {resumed}" if resumed else "started"
        message = (
            f"Training {start}: {p.get('total_steps')} steps, {p.get('examples')} examples, "
            f"{p.get('tokens_per_epoch')} tokens per epoch on {p.get('world_size')} x "
            f"{p.get('device')}"
        )
        return "training_start", message, {"total_steps": p.get("total_steps")}
    if event.type == "TrainingProgressed":
        message = (
            f"Step {p['step']}/{p['total_steps']}: training loss={float(p['loss']):.4f}, "
            f"{float(p.get('tokens_per_second') or 0):.0f} tokens/s, "
            f"ETA {int(p.get('eta_seconds') or 0)}s"
        )
        data: dict[str, Any] = {
            k: p[k]
            for k in (
                "step",
                "total_steps",
                "epoch",
                "loss",
                "learning_rate",
                "tokens_per_second",
                "eta_seconds",
            )
            if k in p
        }
        return "training_step", message, data
    if event.type == "TrainingEvaluated":
        message = f"Step {p['step']}: validation loss={float(p['eval_loss']):.4f}"
        return "eval", message, {"step": p["step"], "eval_loss": p["eval_loss"]}
    if event.type == "TrainingFailed" and p.get("will_retry"):
        return "job_restarted", f"Attempt {p.get('attempt')} failed, retrying: {p.get('error')}", {}
    return None


class WorkloadsFollower(Follower):
    name = "workloads.jobs"
    stream_types = (LEASE_STREAM, TRAINING_STREAM)
    batch_size = 200

    def handle(self, event: RecordedEvent) -> None:
        payload = event.payload
        if event.stream_type == LEASE_STREAM:
            lease_ref = str(payload.get("lease_id", ""))
            reason = str(payload.get("reason") or event.type)
            workload_id = str(payload.get("workload_id") or "")
            if event.type == LEASE_STARTED and (
                payload.get("workload_kind") == "inference"
                # A dedicated endpoint's replica: a raw lease, billed to the buyer.
                or workload_id.startswith(DEDICATED_PREFIX)
            ):
                inference.deployment_lease_started(
                    deployment_id=workload_id.removeprefix(DEDICATED_PREFIX),
                    lease_ref=lease_ref,
                    order_ref=str(payload.get("order_id", "")),
                )
                return
            if event.type in LEASE_CLOSED:
                inference.deployment_lease_ended(lease_ref=lease_ref, reason=reason)
            if event.type == LEASE_STARTED and payload.get("workload_kind") == "fine_tune":
                jobs.finetune_job_start(
                    job_id=str(payload.get("workload_id") or ""), lease_ref=lease_ref
                )
            elif event.type in LEASE_INTERRUPTED:
                # Closed-lease events do not name their workload: the job running on
                # the lease is found by it, and goes back to wait for GPUs to resume.
                for job_id in jobs.finetune_jobs_on_lease(lease_ref=lease_ref):
                    jobs.finetune_job_interrupt(
                        job_id=job_id,
                        lease_ref=lease_ref,
                        reason=reason,
                        at=event.recorded_at,
                        source_position=event.position,
                    )
            return
        job_id = _job_id(event)
        if not job_id:
            return
        progress = _progress(event)
        if progress is not None:
            kind, message, data = progress
            jobs.finetune_job_progress(
                job_id=job_id,
                kind=kind,
                message=message,
                at=event.recorded_at,
                source_position=event.position,
                step=payload.get("step") if event.type == "TrainingProgressed" else None,
                total_steps=payload.get("total_steps"),
                data=data,
                level="warning" if kind == "job_restarted" else "info",
            )
        elif event.type == "CheckpointSaved":
            jobs.finetune_checkpoint_record(
                job_id=job_id,
                step=int(payload["step"]),
                at=event.recorded_at,
                source_position=event.position,
                adapter_path=str(payload.get("location") or ""),
                is_final=bool(payload.get("final")),
            )
        elif event.type == "TrainingSucceeded":
            jobs.finetune_checkpoint_merged(
                job_id=job_id,
                merged_path=str(payload.get("merged_location") or ""),
                adapter_path=str(payload.get("model_location") or ""),
                step=int(payload.get("steps") or 0),
                loss=payload.get("final_loss"),
                at=event.recorded_at,
            )
            jobs.finetune_job_finish(
                job_id=job_id,
                status="succeeded",
                at=event.recorded_at,
                source_position=event.position,
                steps_completed=payload.get("steps"),
            )
        elif event.type == "TrainingCancelled":
            jobs.finetune_job_finish(
                job_id=job_id,
                status="cancelled",
                at=event.recorded_at,
                source_position=event.position,
                steps_completed=payload.get("step"),
            )
        elif event.type == "TrainingFailed" and not payload.get("will_retry"):
            jobs.finetune_job_finish(
                job_id=job_id,
                status="failed",
                at=event.recorded_at,
                source_position=event.position,
                error={
                    "code": "training_failed",
                    "message": str(payload.get("error") or "training failed"),
                    "param": None,
                },
            )


register(WorkloadsFollower())
