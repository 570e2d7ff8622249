"""Files: the organization's uploaded datasets (paged), an upload through a Form that
the same service checks as the API's ``POST /v1/files`` (purpose, name and type,
size, and each line of a dataset), and delete. Every member reads; admins and
members upload and delete, as with the API's keys."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError
from marketplace.workloads import selectors as workloads
from marketplace.workloads import services as workload_writes
from marketplace.workloads.models import File
from portal.access import BUYER_KINDS, OPERATORS, member_page
from portal.forms import add_service_error
from portal.views.paging import page_of
from portal.workload_forms import FileUploadForm

CHUNK = 1024 * 1024


def _files_page(request: HttpRequest, form: FileUploadForm, *, status: int = 200) -> HttpResponse:
    files = workloads.file_list(organization=request.member.organization)  # type: ignore[attr-defined]
    return render(
        request,
        "portal/buyer/files.html",
        {"page": page_of(request, files), "form": form},
        status=status,
    )


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def file_list(request: HttpRequest) -> HttpResponse:
    return _files_page(request, FileUploadForm())


@require_POST
@member_page(kinds=BUYER_KINDS, roles=OPERATORS)
def file_upload(request: HttpRequest) -> HttpResponse:
    form = FileUploadForm(request.POST, request.FILES)
    if form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            file = workload_writes.file_upload(
                organization=request.member.organization,  # type: ignore[attr-defined]
                purpose=form.cleaned_data["purpose"],
                filename=upload.name or "upload.jsonl",
                chunks=upload.chunks(CHUNK),
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            if file.status == File.Status.ERROR:
                # Stored and listed with its verdict, as the API keeps it; the reason
                # (with its line) goes beside the field.
                form.add_error(
                    "file", f"{file.filename} is not a valid dataset: {file.error_message}"
                )
            else:
                checked = (
                    f"{file.examples} examples" if file.examples is not None else "being checked"
                )
                messages.success(
                    request, f"Uploaded {file.filename} as {file.public_id} ({checked})."
                )
                return redirect("portal:console-files")
    return _files_page(request, form, status=400)


@require_POST
@member_page(kinds=BUYER_KINDS, roles=OPERATORS)
def file_delete(request: HttpRequest, file_id: str) -> HttpResponse:
    file = workloads.file_get(organization=request.member.organization, file_id=file_id)  # type: ignore[attr-defined]
    try:
        workload_writes.file_delete(file=file)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Deleted {file.filename} ({file.public_id}).")
    return redirect("portal:console-files")
