"""The operator's finance pages for exports and providers' statements: request an
export (a worker writes it, as CSV, Parquet or XLSX), list them with their state and
progress (the list polls itself with htmx while one runs), download one that is
done; every provider's monthly statements, and one of them line by line."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError, Conflict, NotFound
from exports import selectors as reports
from exports import services as exports
from exports.models import FinanceExport
from invoicing import selectors as statements
from portal.access import finance_page, member_actor, member_caller
from portal.finance_forms import ExportRequestForm, StatementFilterForm, month_in_url
from portal.forms import add_service_error
from portal.views.paging import page_of

# How often the exports list asks for fresh progress while an export runs.
EXPORT_POLL_SECONDS = 2


def _export_list(
    request: HttpRequest, form: ExportRequestForm | None, status: int, template: str
) -> HttpResponse:
    page = page_of(request, reports.exports_recent())
    running = sum(
        1
        for export in page.object_list
        if export.status in (FinanceExport.Status.QUEUED, FinanceExport.Status.RUNNING)
    )
    return render(
        request,
        template,
        {"form": form, "page": page, "running": running, "poll_seconds": EXPORT_POLL_SECONDS},
        status=status,
    )


@require_http_methods(["GET"])
@finance_page
def export_list(request: HttpRequest) -> HttpResponse:
    return _export_list(request, ExportRequestForm(), 200, "portal/finance/exports.html")


@require_http_methods(["GET"])
@finance_page
def export_rows(request: HttpRequest) -> HttpResponse:
    """The list's part that the page polls while an export is queued or running (the
    swap stops asking once none is)."""
    return _export_list(request, None, 200, "portal/finance/exports.html#rows")


@require_POST
@finance_page
def export_create(request: HttpRequest) -> HttpResponse:
    form = ExportRequestForm(request.POST)
    if form.is_valid():
        try:
            export = exports.export_create(
                kind=form.cleaned_data["kind"],
                format=form.cleaned_data["format"],
                params=form.params(),
                requested_by=member_actor(request),
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(
                request,
                f"Export {export.pk} ({export.kind}, {export.format}) is queued: "
                "it is listed below with its progress, and can be downloaded once done.",
            )
            return redirect("portal:finance-exports")
    return _export_list(request, form, 400, "portal/finance/exports.html")


@require_http_methods(["GET"])
@finance_page
def export_download(request: HttpRequest, export_id: int) -> HttpResponse | FileResponse:
    """The finished file; an export not finished yet sends the person back to the
    list, which says so."""
    export = exports.export_get(export_id=export_id)
    try:
        path = exports.export_file(export=export)
    except Conflict as refusal:
        messages.error(request, refusal.message)
        return redirect("portal:finance-exports")
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=export.file_name,
        content_type=exports.CONTENT_TYPES[export.format],
    )


@require_http_methods(["GET"])
@finance_page
def statement_list(request: HttpRequest) -> HttpResponse:
    form = StatementFilterForm(request.GET or None)
    valid = form.is_valid() if form.is_bound else True
    found = (
        statements.statements_for_caller(
            caller=member_caller(request),
            organization_id=form.cleaned_data.get("organization") if form.is_bound else None,
        )
        .select_related("organization")
        .defer("document")
        .order_by("-period_start", "organization__name", "pk")
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "portal/finance/statements.html",
        {
            "form": form,
            "page": page_of(request, found) if valid else None,
            "pager_query": f"{query.urlencode()}&" if query else "",
        },
        status=200 if valid else 400,
    )


@require_http_methods(["GET"])
@finance_page
def statement_detail(request: HttpRequest, organization_id: int, period: str) -> HttpResponse:
    """A provider's month, as the statements API answers it for finance staff: the
    statement stored at the close, or the month so far computed from the journal."""
    provider = statements.organization_for_caller(
        caller=member_caller(request), organization_id=organization_id
    )
    if not provider.is_provider:
        raise NotFound(f"{provider.name} is not a provider")
    month = month_in_url(period, today=timezone.now().date())
    found = statements.statement_for_period(
        provider=provider, period=month, now=timezone.now(), currency=settings.TANDEM_CURRENCY
    )
    return render(
        request,
        "portal/finance/statement.html",
        {"provider": provider, "statement": found, "doc": found.document},
    )
