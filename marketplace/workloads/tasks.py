"""Workload actors: take ids, load, call a service."""

from __future__ import annotations

import dramatiq

from marketplace.workloads import batch_runner, batches, inference
from marketplace.workloads import files as workload_files
from marketplace.workloads.models import File


@dramatiq.actor(actor_name=workload_files.FILE_CHECK_TASK, queue_name="workloads", max_retries=3)
def file_check_task(file_id: str) -> None:
    """Check a dataset too large to check within its upload request."""
    file = File.objects.filter(public_id=file_id, status=File.Status.UPLOADED).first()
    if file is not None:
        workload_files.file_check(file=file)


@dramatiq.actor(queue_name="workloads", max_retries=0)
def deployments_stop_idle_task() -> None:
    """Stop inference deployments idle past their timeout. The matching loop
    (``run_matching``) does it on every pass; this actor is for a scheduler that
    runs no matching loop."""
    inference.deployments_stop_idle()


@dramatiq.actor(
    actor_name=batches.RUN_ACTOR, queue_name="workloads", max_retries=0, time_limit=600_000
)
def batch_run_task(batch_id: str, token: str = "") -> None:
    """One slice of a batch's runner; sent on with its token while work is left (a
    runner that dies is replaced by ``batches_tick`` once its claim runs out)."""
    following = batch_runner.batch_run(batch_id=batch_id, token=token)
    if following is not None:
        batch_run_task.send_with_options(
            args=(batch_id, following.token), delay=int(following.delay * 1000)
        )


@dramatiq.actor(queue_name="workloads", max_retries=0)
def batches_tick_task() -> None:
    """Expire batches past their window and restart runners that died. The matching
    loop (``run_matching``) does it on every pass; this actor is for a scheduler
    that runs no matching loop."""
    batches.batches_tick()
