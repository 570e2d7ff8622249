"""Projects and discovery: an organization seen as a Together project.

Together's client puts the project id in the path (``/v2/projects/{project_id}/...``,
from ``TOGETHER_PROJECT_ID``). A Tandem API key belongs to one organization, so the
project is that organization; any other id is a 404, whether it names another
organization or nothing (ids leak nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.models import Organization
from core.ports import ModelCard
from marketplace.workloads import ports as external
from marketplace.workloads import selectors as workloads
from marketplace.workloads.endpoint_names import organization_slug
from marketplace.workloads.errors import not_found
from marketplace.workloads.models import FineTuneJob

PROJECT_PREFIX = "proj_"
ORGANIZATION_PREFIX = "org_"


def project_id(organization: Organization) -> str:
    """Stable as long as the organization exists (its primary key, prefixed)."""
    return f"{PROJECT_PREFIX}{organization.pk}"


def organization_public_id(organization: Organization) -> str:
    return f"{ORGANIZATION_PREFIX}{organization.pk}"


def project_slug(organization: Organization) -> str:
    """The slug fine-tuned model names use too (``ft:<base>:<slug>:...``), and in front
    of a dedicated endpoint's name."""
    return organization_slug(organization)


def project_check(*, organization: Organization, project: str) -> None:
    """A 404 unless ``project`` is the caller's own organization's project id."""
    if project != project_id(organization):
        raise not_found("project", project, param="project_id")


@dataclass(frozen=True, slots=True)
class ProjectModel:
    """A model a project owns: one of its fine-tuned models."""

    id: str
    name: str
    base_model: str
    created_at: datetime | None
    adapter: bool


def _project_model(job: FineTuneJob) -> ProjectModel:
    return ProjectModel(
        id=str(job.fine_tuned_model),
        name=str(job.fine_tuned_model),
        base_model=job.model,
        created_at=job.finished_at,
        adapter=job.training_type == "lora",
    )


def project_models(*, organization: Organization) -> list[ProjectModel]:
    """Newest first: the organization's succeeded fine-tunes that still have a model."""
    jobs = workloads.fine_tuned_models(organization=organization).exclude(
        fine_tuned_model__isnull=True
    )
    return [_project_model(job) for job in jobs]


def project_model_get(*, organization: Organization, model_id: str) -> ProjectModel:
    found = next((m for m in project_models(organization=organization) if m.id == model_id), None)
    if found is None:
        raise not_found("model", model_id, param="id")
    return found


def supported_models() -> list[ModelCard]:
    """The base models this platform serves and fine-tunes (the runtime's registry)."""
    return external.base_models()
