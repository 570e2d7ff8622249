"""Fine-tune jobs: the list with each job's status; a new job (a base model and a
checked training file, the estimate shown before it starts, a clear refusal when
credit is short); a job's page with its progress (steps, the loss per step as a
table, its events and checkpoints), which polls its ``progress`` partial while the
job runs; and cancel. Every member reads; admins and members start and cancel, as
in the API. Another organization's job is a 404."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError, InsufficientFunds
from core.money import Money
from marketplace.workloads import selectors as workloads
from marketplace.workloads import services as workload_writes
from marketplace.workloads.models import File, FineTuneJob
from portal.access import BUYER_KINDS, OPERATORS, member_page
from portal.forms import add_service_error
from portal.views.paging import page_of
from portal.workload_forms import JobCreateForm

# How often a running job's page asks for fresh progress (the runtime reports a step
# at a time; a few seconds is live enough and cheap).
PROGRESS_POLL_SECONDS = 3
EVENTS_SHOWN = 50
PORTAL_REQUEST = "portal_request"
STEPS_SHOWN = 200  # at most this many steps in the loss table, spread evenly


def _organization(request: HttpRequest):
    return request.member.organization  # type: ignore[attr-defined]


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = workloads.job_list(organization=_organization(request)).defer(
        "hyperparameters", "requested", "metadata"
    )
    return render(request, "portal/buyer/jobs.html", {"page": page_of(request, jobs)})


def _job_form(request: HttpRequest, data: object = None) -> JobCreateForm:
    files = workloads.file_list(organization=_organization(request), purpose="fine-tune").filter(
        status=File.Status.PROCESSED
    )
    return JobCreateForm(
        data,
        models=[card.name for card in workloads.base_models()],
        files=[(f.public_id, f"{f.filename} ({f.examples} examples)") for f in files[:200]],
        initial={"training_file": request.GET.get("file", "")},
    )


@require_http_methods(["GET", "POST"])
@member_page(kinds=BUYER_KINDS, roles=OPERATORS)
def job_create(request: HttpRequest) -> HttpResponse:
    """``action=estimate`` prices the job as starting it would (the same token counts
    and price book) and shows the form again with the estimate; ``action=start``
    starts it. Short of credit, the refusal says by how much."""
    form = _job_form(request, request.POST or None)
    context: dict[str, object] = {"form": form}
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        # The form's key rides in the job's metadata (as an API client's own keys do),
        # where a resubmitted form finds the job it started.
        marker = {PORTAL_REQUEST: data["request_key"]}
        job_request = workload_writes.JobRequest(
            model=data["model"],
            training_file=data["training_file"],
            training_type=data["training_type"],
            n_epochs=data["n_epochs"],
            suffix=data["suffix"],
            metadata=marker,
            requested={k: v for k, v in data.items() if v not in (None, "") and k != "request_key"},
        )
        organization = _organization(request)
        try:
            if request.POST.get("action") == "start":
                started = workloads.job_list(organization=organization, metadata=marker).first()
                if started is not None:
                    return redirect("portal:console-job", job_id=started.public_id)
                job = workload_writes.finetune_job_create(
                    organization=organization, request=job_request
                )
                messages.success(
                    request,
                    f"Started {job.public_id}: estimated at "
                    f"{Money(job.estimate_micros, job.currency)}; it waits for GPUs on the market.",
                )
                return redirect("portal:console-job", job_id=job.public_id)
            context["quote"] = workload_writes.finetune_quote(
                organization=organization, request=job_request
            )
        except InsufficientFunds as error:
            context["short"] = error.message
        except ApplicationError as error:
            add_service_error(form, error)
    status = 400 if request.method == "POST" and (form.errors or "short" in context) else 200
    return render(request, "portal/buyer/job_new.html", context, status=status)


def _progress_context(job: FineTuneJob) -> dict[str, object]:
    return {
        "job": job,
        "steps": workloads.job_metrics(job=job, query={"resolution": str(STEPS_SHOWN)}),
        "events": list(workloads.job_events(job=job)[:EVENTS_SHOWN]),
        "checkpoints": list(workloads.job_checkpoints(job=job)),
        "poll_seconds": PROGRESS_POLL_SECONDS,
    }


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    job = workloads.job_get(organization=_organization(request), job_id=job_id)
    return render(request, "portal/buyer/job.html", _progress_context(job))


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def job_progress(request: HttpRequest, job_id: str) -> HttpResponse:
    """The job page's live part (status, steps, loss table, events), which the page
    polls while the job has not finished; without JavaScript, reloading shows the same."""
    job = workloads.job_get(organization=_organization(request), job_id=job_id)
    return render(request, "portal/buyer/job.html#progress", _progress_context(job))


@require_POST
@member_page(kinds=BUYER_KINDS, roles=OPERATORS)
def job_cancel(request: HttpRequest, job_id: str) -> HttpResponse:
    job = workloads.job_get(organization=_organization(request), job_id=job_id)
    try:
        job = workload_writes.finetune_job_cancel(job=job)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        if job.status == FineTuneJob.Status.CANCELLED:
            messages.success(request, f"Cancelled {job.public_id}; nothing was billed.")
        else:
            messages.success(
                request,
                f"Cancelling {job.public_id}: it stops after the current step and keeps "
                "its last checkpoint.",
            )
    return redirect("portal:console-job", job_id=job.public_id)
