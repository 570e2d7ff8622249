"""Reads of buyer workloads, always scoped to one organization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Model, Q, QuerySet, Sum

from core.models import Organization
from marketplace.workloads.errors import invalid, not_found

# Public for the apps above: a job's metrics and the base models on offer.
from marketplace.workloads.metrics import job_metrics as job_metrics
from marketplace.workloads.models import (
    Batch,
    BatchRequest,
    Deployment,
    File,
    FineTuneCheckpoint,
    FineTuneEvent,
    FineTuneJob,
)
from marketplace.workloads.ports import base_models as base_models

MAX_PAGE = 100


def file_get(*, organization: Organization, file_id: str, param: str | None = None) -> File:
    file = File.objects.filter(
        organization=organization, public_id=file_id, deleted_at=None
    ).first()
    if file is None:
        raise not_found("file", file_id, param=param)
    return file


def file_list(*, organization: Organization, purpose: str | None = None) -> QuerySet[File]:
    files = File.objects.filter(organization=organization, deleted_at=None).exclude(
        status=File.Status.AWAITING_BYTES
    )
    if purpose:
        files = files.filter(purpose=purpose)
    return files.order_by("-pk")


def job_get(*, organization: Organization, job_id: str) -> FineTuneJob:
    job = (
        FineTuneJob.objects.select_related("training_file", "validation_file")
        .filter(organization=organization, public_id=job_id)
        .first()
    )
    if job is None:
        raise not_found("fine-tune job", job_id, param="fine_tuning_job_id")
    return job


def job_list(
    *, organization: Organization, metadata: dict[str, str] | None = None
) -> QuerySet[FineTuneJob]:
    jobs = FineTuneJob.objects.select_related("training_file", "validation_file").filter(
        organization=organization
    )
    for key, value in (metadata or {}).items():
        jobs = jobs.filter(**{f"metadata__{key}": value})
    return jobs.order_by("-pk")


def job_events(*, job: FineTuneJob) -> QuerySet[FineTuneEvent]:
    return job.events.order_by("-pk")


def job_checkpoints(*, job: FineTuneJob) -> QuerySet[FineTuneCheckpoint]:
    return job.checkpoints.order_by("-step")


def fine_tuned_models(*, organization: Organization) -> QuerySet[FineTuneJob]:
    return FineTuneJob.objects.filter(
        organization=organization, status=FineTuneJob.Status.SUCCEEDED
    ).order_by("-pk")


def deployments_for_org(*, organization: Organization) -> QuerySet[Deployment]:
    """The organization's own deployments (of its fine-tuned models), newest first.
    The platform's shared deployments of base models belong to no buyer."""
    return Deployment.objects.filter(organization=organization).order_by("-pk")


def deployment_get(*, organization: Organization, deployment_id: str) -> Deployment:
    deployment = Deployment.objects.filter(
        organization=organization, public_id=deployment_id
    ).first()
    if deployment is None:
        raise not_found("deployment", deployment_id, param="deployment_id")
    return deployment


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    has_more: bool


def page_after(queryset: QuerySet[Any], *, after: str | None, limit_raw: str | None) -> Page:
    """OpenAI-style pages over a newest-first queryset: ``after`` is the public id
    of the last item of the previous page, ``limit`` 1 to 100 (default 20)."""
    if limit_raw in (None, ""):
        limit = 20
    else:
        try:
            limit = int(limit_raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise invalid(f"limit must be a whole number from 1 to {MAX_PAGE}", param="limit")
    if after:
        anchor: Model | None = queryset.filter(public_id=after).first()
        if anchor is None:
            raise invalid(f"after names no item of this list: {after}", param="after")
        ordering = queryset.query.order_by
        # Unordered pages run newest first, by primary key.
        first = ordering[0] if ordering else "-pk"
        if not isinstance(first, str):
            raise TypeError("page_after needs a queryset ordered by a field name")
        descending = first.startswith("-")
        field = first.lstrip("-") or "pk"
        value = getattr(anchor, "pk" if field == "pk" else field)
        queryset = queryset.filter(**{f"{field}__lt" if descending else f"{field}__gt": value})
    items = list(queryset[: limit + 1])
    return Page(items=items[:limit], has_more=len(items) > limit)


# --- batches ---------------------------------------------------------------------


def batch_get(*, organization: Organization, batch_id: str) -> Batch:
    batch = (
        Batch.objects.select_related("input_file", "output_file", "error_file")
        .filter(organization=organization, public_id=batch_id)
        .first()
    )
    if batch is None:
        raise not_found("batch", batch_id)
    return batch


def batch_list(*, organization: Organization) -> QuerySet[Batch]:
    return (
        Batch.objects.select_related("input_file", "output_file", "error_file")
        .filter(organization=organization)
        .order_by("-pk")
    )


@dataclass(frozen=True, slots=True)
class BatchProgress:
    total: int
    completed: int
    failed: int  # failed, and (once it ended) cancelled or expired unrun
    prompt_tokens: int
    completion_tokens: int


def batch_progress(*, batch: Batch) -> BatchProgress:
    done = BatchRequest.State.COMPLETED
    not_done = [
        BatchRequest.State.FAILED,
        BatchRequest.State.CANCELLED,
        BatchRequest.State.EXPIRED,
    ]
    found = BatchRequest.objects.filter(batch=batch).aggregate(
        completed=Count("pk", filter=Q(state=done)),
        failed=Count("pk", filter=Q(state__in=not_done)),
        prompt=Sum("prompt_tokens", filter=Q(state=done)),
        completion=Sum("completion_tokens", filter=Q(state=done)),
    )
    return BatchProgress(
        total=batch.total,
        completed=found["completed"],
        failed=found["failed"],
        prompt_tokens=found["prompt"] or 0,
        completion_tokens=found["completion"] or 0,
    )
