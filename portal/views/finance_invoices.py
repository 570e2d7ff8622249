"""The operator's finance pages for invoices: every buyer's (filtered by status and
period, paged), an invoice's page with its lines and its PDF, and the month close:
where each recent month stands, and closing a past one (``invoicing.services.
period_close``, called here, never through the API). An invoice's actions: issue a
draft, void an unpaid one, record a payment made outside Stripe, each through
invoicing's services and each behind a confirmation."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError
from core.money import Money
from invoicing import selectors as books
from invoicing import services as invoicing
from invoicing.models import Invoice
from portal.access import finance_page, member_actor, member_caller
from portal.finance_forms import (
    InvoiceFilterForm,
    InvoiceIssueForm,
    InvoiceMarkPaidForm,
    InvoiceVoidForm,
    PeriodCloseForm,
)
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


def _invoice_page(
    request: HttpRequest,
    invoice_id: int,
    *,
    issue: InvoiceIssueForm | None = None,
    void: InvoiceVoidForm | None = None,
    paid: InvoiceMarkPaidForm | None = None,
) -> HttpResponse:
    """An invoice with the actions its status allows, each a confirmation form; a
    refused one comes back with its errors beside its fields (400)."""
    invoice = books.invoice_get(caller=member_caller(request), invoice_id=invoice_id)
    doc = invoice.document or {}
    bps = int(doc.get("totals", {}).get("tax_rate_bps", invoice.tax_rate_bps))
    refused = any(form is not None and form.errors for form in (issue, void, paid))
    unpaid = invoice.status in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE)
    credit_notes = sorted(invoice.credit_notes.all(), key=lambda note: note.issued_at)
    return render(
        request,
        "portal/finance/invoice.html",
        {
            "invoice": invoice,
            "doc": doc,
            "tax_rate": f"{bps // 100}.{bps % 100:02d}%",
            "credit_notes": credit_notes,
            # A refused form is shown with its errors even where the invoice's status
            # no longer offers it (someone acted first).
            "issue_form": issue
            or (InvoiceIssueForm() if invoice.status == Invoice.Status.DRAFT else None),
            # An invoice with payments or credit notes is corrected by a credit note.
            "void_form": void
            or (
                InvoiceVoidForm()
                if unpaid and not invoice.amount_paid_micros and not credit_notes
                else None
            ),
            "paid_form": paid or (InvoiceMarkPaidForm() if unpaid else None),
        },
        status=400 if refused else 200,
    )


@require_http_methods(["GET"])
@finance_page
def invoice_detail(request: HttpRequest, invoice_id: int) -> HttpResponse:
    return _invoice_page(request, invoice_id)


@require_POST
@finance_page
def invoice_issue(request: HttpRequest, invoice_id: int) -> HttpResponse:
    """Finalize a draft now (``invoicing.services.invoice_finalize_requested``)."""
    form = InvoiceIssueForm(request.POST)
    if form.is_valid():
        invoice = books.invoice_get(caller=member_caller(request), invoice_id=invoice_id)
        try:
            issued = invoicing.invoice_finalize_requested(
                invoice=invoice, actor=member_actor(request)
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(
                request,
                f"Invoice {issued.number} issued: "
                f"{Money(issued.amount_due_micros, issued.currency)} due.",
            )
            return redirect("portal:finance-invoice", invoice_id=invoice_id)
    return _invoice_page(request, invoice_id, issue=form)


@require_POST
@finance_page
def invoice_void(request: HttpRequest, invoice_id: int) -> HttpResponse:
    form = InvoiceVoidForm(request.POST)
    if form.is_valid():
        invoice = books.invoice_get(caller=member_caller(request), invoice_id=invoice_id)
        try:
            voided = invoicing.invoice_void(
                invoice=invoice, reason=form.cleaned_data["reason"], actor=member_actor(request)
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"Invoice {voided.number} voided: its postings reversed.")
            return redirect("portal:finance-invoice", invoice_id=invoice_id)
    return _invoice_page(request, invoice_id, void=form)


@require_POST
@finance_page
def invoice_mark_paid(request: HttpRequest, invoice_id: int) -> HttpResponse:
    """A payment made outside Stripe (a bank transfer) of everything still owed."""
    form = InvoiceMarkPaidForm(request.POST)
    if form.is_valid():
        invoice = books.invoice_get(caller=member_caller(request), invoice_id=invoice_id)
        try:
            paid = invoicing.invoice_mark_paid(
                invoice=invoice,
                payment_reference=form.cleaned_data["payment_reference"],
                actor=member_actor(request),
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(
                request,
                f"Invoice {paid.number} marked paid ({paid.payment_reference}): "
                f"{Money(paid.amount_paid_micros, paid.currency)} received.",
            )
            return redirect("portal:finance-invoice", invoice_id=invoice_id)
    return _invoice_page(request, invoice_id, paid=form)


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
