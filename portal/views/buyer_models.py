"""Models: the organization's fine-tuned models (its succeeded jobs' results) and the
deployments serving them, with stop for a live one (admins and members:
marketplace.workloads.services.deployment_stop ends its lease, billed to now).

There is no start here: a deployment starts with the first inference request for its
model (``deployment_acquire``, which waits for GPUs inside that request), and the
workloads services offer no way to start one without a request; the page says how."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from marketplace.workloads import selectors as workloads
from marketplace.workloads import services as workload_writes
from marketplace.workloads.models import Deployment
from portal.access import BUYER_KINDS, OPERATORS, member_page
from portal.views.paging import page_of

DEPLOYMENTS_SHOWN = 50


def _organization(request: HttpRequest):
    return request.member.organization  # type: ignore[attr-defined]


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def model_list(request: HttpRequest) -> HttpResponse:
    organization = _organization(request)
    models = workloads.fine_tuned_models(organization=organization).only(
        "public_id", "model", "fine_tuned_model", "training_type", "finished_at", "created_at"
    )
    deployments = workloads.deployments_for_org(organization=organization)[:DEPLOYMENTS_SHOWN]
    return render(
        request,
        "portal/buyer/models.html",
        {"page": page_of(request, models), "deployments": list(deployments)},
    )


@require_POST
@member_page(kinds=BUYER_KINDS, roles=OPERATORS)
def deployment_stop(request: HttpRequest, deployment_id: str) -> HttpResponse:
    deployment = workloads.deployment_get(
        organization=_organization(request), deployment_id=deployment_id
    )
    if deployment.status == Deployment.Status.STOPPED:
        messages.error(request, f"Deployment {deployment.public_id} has already stopped.")
    elif workload_writes.deployment_stop(deployment=deployment, reason="stopped in the console"):
        messages.success(
            request,
            f"Stopped {deployment.public_id} of {deployment.model}: its lease ended, billed "
            "to now. The next request for the model starts a new deployment.",
        )
    else:  # stopped meanwhile (idle, or its lease ended)
        messages.error(request, f"Deployment {deployment.public_id} had already stopped.")
    return redirect("portal:console-models")
