"""Deleting what a buyer fine-tuned: Together's ``DELETE /v1/fine-tunes/{id}`` (the job
and its model) and OpenAI's ``DELETE /v1/models/{model}`` (the model; the job's record
stays, without a model).

Only a finished job can go: a queued or running one is a 409 (cancel it first), so no
training step is metered for a job that no longer exists. A live deployment of the
model is stopped first (its lease ends, billed to now), then the checkpoints' weights
are removed from storage. Billing is untouched: what was metered and rated stays in
the ledger and on invoices, which name the job by its id."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction

from core.models import Organization
from marketplace.workloads import inference
from marketplace.workloads.errors import conflict, not_found
from marketplace.workloads.models import Deployment, FineTuneCheckpoint, FineTuneJob


def _finished(job: FineTuneJob) -> FineTuneJob:
    job = FineTuneJob.objects.select_for_update().get(pk=job.pk)
    if not job.is_terminal:
        raise conflict(
            f"fine-tune job {job.public_id} is {job.status}: cancel it first, then delete it",
            code="job_not_finished",
        )
    return job


def _stop_deployments(model: str | None) -> None:
    if not model:
        return
    for deployment in Deployment.objects.filter(model=model).exclude(
        status=Deployment.Status.STOPPED
    ):
        inference.deployment_stop(deployment=deployment, reason="the model was deleted")


def _weights_remove(checkpoints: list[FineTuneCheckpoint]) -> None:
    """Remove checkpoint directories, only ever inside the storage root."""
    root = Path(settings.WORKLOADS_STORAGE_DIR).resolve()
    for checkpoint in checkpoints:
        for raw in (checkpoint.adapter_path, checkpoint.merged_path):
            if not raw:
                continue
            path = Path(raw).resolve()
            if path == root or root not in path.parents:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()


def finetune_job_delete(*, job: FineTuneJob) -> str:
    """Together: the job, its events, checkpoints and model are gone. Returns its id."""
    with transaction.atomic():
        job = _finished(job)
        model = job.fine_tuned_model
    _stop_deployments(model)
    with transaction.atomic():
        job = _finished(job)
        checkpoints = list(job.checkpoints.all())
        job_id = job.public_id
        job.delete()  # events and checkpoints with it (CASCADE)
    _weights_remove(checkpoints)
    return job_id


def finetune_model_delete(*, organization: Organization, name: str) -> str:
    """OpenAI: the fine-tuned model ``name`` of ``organization`` is deleted; its job
    stays, with ``fine_tuned_model`` null. Base models and others' models: 404."""
    job = FineTuneJob.objects.filter(organization=organization, fine_tuned_model=name).first()
    if job is None:
        raise not_found("model", name, param="model")
    _stop_deployments(name)
    with transaction.atomic():
        job = _finished(job)
        checkpoints = list(job.checkpoints.all())
        job.checkpoints.all().delete()
        job.fine_tuned_model = None
        job.save(update_fields=["fine_tuned_model", "updated_at"])
    _weights_remove(checkpoints)
    return name
