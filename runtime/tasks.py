"""Dramatiq actors of the runtime: take ids (and the job's spec), call a service.

The fine-tune job API starts work by name, without importing the runtime::

    dramatiq.get_broker().get_actor("training_run").send(job_id, organization_id, spec)

A redelivered or retried message finds the run it made and resumes it from its
last checkpoint (or does nothing if another worker holds it or it is finished).
"""

from __future__ import annotations

from typing import Any

import dramatiq

from runtime import services

# Training runs for hours: the broker's default ten-minute limit would kill it.
TRAINING_TIME_LIMIT_MS = 7 * 24 * 3600 * 1000


@dramatiq.actor(
    actor_name="training_run",
    queue_name="training",
    max_retries=5,
    min_backoff=5_000,
    max_backoff=300_000,
    time_limit=TRAINING_TIME_LIMIT_MS,
    on_retry_exhausted="training_run_exhausted",
)
def training_run(job_id: str, organization_id: int, spec: dict[str, Any]) -> None:
    services.training_run_submit(
        spec={**spec, "job_id": job_id, "organization_id": organization_id}
    )
    services.training_run_execute(job_id=job_id)


@dramatiq.actor(actor_name="training_cancel", queue_name="training_control", max_retries=3)
def training_cancel(job_id: str) -> None:
    services.training_run_cancel(job_id=job_id)


@dramatiq.actor(actor_name="training_run_exhausted", queue_name="training_control", max_retries=3)
def training_run_exhausted(message_data: dict[str, Any], retry_info: dict[str, Any]) -> None:
    """The broker gave up on a ``training_run`` message: the run fails for good (a
    TrainingFailed event that will not retry), so its job does not wait forever."""
    job_id = message_data["args"][0]
    reason = message_data.get("options", {}).get("traceback") or "training kept failing"
    services.training_run_fail(
        job_id=job_id,
        error=f"gave up after {retry_info.get('retries', '?')} attempts: {reason}"[-2000:],
    )
