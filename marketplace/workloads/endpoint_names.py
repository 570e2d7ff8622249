"""The names a dedicated endpoint answers to as ``model`` in an inference request.

An endpoint is ``<project slug>/<endpoint name>``; one of its deployments, asked for
directly, ``<project slug>/<endpoint name>/<deployment name>``. The slug is the
caller's own organization's, so a name is looked up among the caller's endpoints only:
another organization's endpoint is not found, exactly like one that does not exist.
"""

from __future__ import annotations

from django.utils.text import slugify

from core.models import Organization
from marketplace.workloads.models import DedicatedDeployment, DedicatedEndpoint


def organization_slug(organization: Organization) -> str:
    """The organization's project slug (fine-tuned model names use it too)."""
    return slugify(organization.name)[:40] or f"org-{organization.pk}"


def endpoint_qualified_name(endpoint: DedicatedEndpoint, organization: Organization) -> str:
    return f"{organization_slug(organization)}/{endpoint.name}"


def deployment_qualified_name(
    deployment: DedicatedDeployment, endpoint: DedicatedEndpoint, organization: Organization
) -> str:
    return f"{endpoint_qualified_name(endpoint, organization)}/{deployment.name}"


def bare_name(name: str, organization: Organization) -> str:
    """``name`` without the caller's project slug in front (a create or update may
    give either form)."""
    prefix = f"{organization_slug(organization)}/"
    return name[len(prefix) :] if name.startswith(prefix) else name


def dedicated_route(
    *, organization: Organization, name: str
) -> tuple[list[tuple[DedicatedDeployment, float]], bool] | None:
    """The dedicated deployments a request naming ``name`` may go to, each with its
    weight, and whether ``name`` is a whole endpoint (routed by its traffic split)
    rather than one deployment. None: ``name`` is none of the caller's endpoints."""
    prefix = f"{organization_slug(organization)}/"
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    endpoint_name, _, deployment_name = rest.partition("/")
    endpoint = DedicatedEndpoint.objects.filter(
        organization=organization, name=endpoint_name, deleted_at__isnull=True
    ).first()
    if endpoint is None:
        return None
    live = DedicatedDeployment.objects.filter(endpoint=endpoint, deleted_at__isnull=True)
    if deployment_name:
        found = live.filter(name=deployment_name).first()
        return ([(found, 1.0)], False) if found is not None else None
    weights = {
        str(entry.get("deployment_id")): float(entry.get("weight") or 0)
        for entry in endpoint.traffic_split
        if isinstance(entry, dict)
    }
    chosen = [
        (deployment, weights[deployment.public_id])
        for deployment in live.filter(public_id__in=list(weights)).order_by("pk")
        if weights[deployment.public_id] > 0
    ]
    return chosen, True
