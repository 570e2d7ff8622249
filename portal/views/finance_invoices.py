"""The operator's finance pages for invoices: every buyer's (filtered by status and
period, paged), an invoice's page with its lines and its PDF, and the month close:
where each recent month stands, and closing a past one (``invoicing.services.
period_close``, called here, never through the API)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from core.errors import ApplicationError
from invoicing import selectors as books
from invoicing import services as invoicing
from portal.access import finance_page, member_actor, member_caller
from portal.finance_forms import InvoiceFilterForm, PeriodCloseForm
from portal.forms import add_service_error
from portal.views.finance import CLOSE_MONTHS
from portal.views.paging import page_of


@require_http_methods(["GET"])
@finance_page
def invoice_list(request: HttpRequest) -> HttpResponse:
    form = InvoiceFilterForm(request.GET or None)
    valid = form.is_valid() if form.is_bound else True
    values = form.cleaned_data if form.is_bound and valid else {}
    invoices = (
        books.invoices_for_caller(
            caller=member_caller(request),
            status=values.get("status") or None,
            period=values.get("period"),
        )
        .select_related("organization")
        .defer("document")
        .order_by("-period_start", "-pk")
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "portal/finance/invoices.html",
        {
            "form": form,
            "page": page_of(request, invoices) if valid else None,
            "pager_query": f"{query.urlencode()}&" if query else "",
        },
        status=200 if valid else 400,
    )


@require_http_methods(["GET"])
@finance_page
def invoice_detail(request: HttpRequest, invoice_id: int) -> HttpResponse:
    invoice = books.invoice_get(caller=member_caller(request), invoice_id=invoice_id)
    doc = invoice.document or {}
    bps = int(doc.get("totals", {}).get("tax_rate_bps", invoice.tax_rate_bps))
    return render(
        request,
        "portal/finance/invoice.html",
        {
            "invoice": invoice,
            "doc": doc,
            "tax_rate": f"{bps // 100}.{bps % 100:02d}%",
            "credit_notes": sorted(invoice.credit_notes.all(), key=lambda note: note.issued_at),
        },
    )


@require_http_methods(["GET"])
@finance_page
def invoice_pdf(request: HttpRequest, invoice_id: int) -> HttpResponse:
    invoice = books.invoice_get(caller=member_caller(request), invoice_id=invoice_id)
    response = HttpResponse(books.invoice_pdf(invoice), content_type="application/pdf")
    name = invoice.number or f"draft-{invoice.pk}"
    response["Content-Disposition"] = f'attachment; filename="{name}.pdf"'
    return response


@require_http_methods(["GET", "POST"])
@finance_page
def month_close(request: HttpRequest) -> HttpResponse:
    """The recent months' closes, and the form that closes a past month."""
    now = timezone.now()
    form = PeriodCloseForm(request.POST or None, now=now)
    if request.method == "POST" and form.is_valid():
        period = form.cleaned_data["period"]
        try:
            result = invoicing.period_close(
                period=period,
                finalize=True if form.cleaned_data["finalize"] else None,
                now=now,
                actor=member_actor(request),
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(
                request,
                f"{period:%Y-%m} closed: {result.finalized} invoices finalized, "
                f"{result.drafts} drafts refreshed, {result.already_final} already final, "
                f"{result.statements} provider statements written.",
            )
            return redirect("portal:finance-close")
    return render(
        request,
        "portal/finance/close.html",
        {"form": form, "closes": books.months_close_status(months=CLOSE_MONTHS, now=now)},
        status=400 if form.is_bound and form.errors else 200,
    )
