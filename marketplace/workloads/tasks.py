"""Workload actors: take ids, load, call a service."""

from __future__ import annotations

import dramatiq

from marketplace.workloads import files as workload_files
from marketplace.workloads import inference
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
