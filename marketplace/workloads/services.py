"""The workloads' writes that the apps above use (the portal's pages), re-exported
from the modules that hold them by role: files.py (uploads, dataset checks, token
counts), jobs.py (fine-tune jobs), inference.py (models and deployments; the
requests themselves go through gateway.py). Inside marketplace, code imports those
modules directly; managed.py holds what they share (the managed order, the lease's
end, the event append)."""

from __future__ import annotations

from marketplace.workloads.files import file_delete, file_upload
from marketplace.workloads.inference import deployment_stop
from marketplace.workloads.jobs import (
    JobRequest,
    finetune_job_cancel,
    finetune_job_create,
    finetune_quote,
)

__all__ = [
    "JobRequest",
    "deployment_stop",
    "file_delete",
    "file_upload",
    "finetune_job_cancel",
    "finetune_job_create",
    "finetune_quote",
]
