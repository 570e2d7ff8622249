"""Invoices and credit notes: the list (paged), an invoice's page drawn from its
document (``Invoice.document``, frozen at finalization, the same the API's HTML and
PDF renderings are made from) with its credit notes, and the PDF itself
(billing.documents). Every member reads them; another organization's invoice is a
404."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from core.errors import NotFound
from invoicing import selectors as books
from invoicing import selectors as invoice_documents
from invoicing.models import Invoice
from portal.access import BUYER_KINDS, member_page
from portal.views.buyer_checkout import member_caller
from portal.views.paging import page_of


def _invoice(request: HttpRequest, invoice_id: int) -> Invoice:
    """The member's own organization's invoice (operator finance reads others' in
    the finance pages, not in a console)."""
    organization = request.member.organization  # type: ignore[attr-defined]
    invoice = books.invoice_get(caller=member_caller(request), invoice_id=invoice_id)
    if invoice.organization_id != organization.pk:
        raise NotFound(
            f"no invoice {invoice_id} in your organization", details={"invoice": invoice_id}
        )
    return invoice


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def invoice_list(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    invoices = (
        books.invoices_for_caller(caller=member_caller(request), organization_id=organization.pk)
        .defer("document")
        .order_by("-period_start", "-pk")
    )
    return render(request, "portal/buyer/invoices.html", {"page": page_of(request, invoices)})


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def invoice_detail(request: HttpRequest, invoice_id: int) -> HttpResponse:
    invoice = _invoice(request, invoice_id)
    doc = invoice.document or {}
    bps = int(doc.get("totals", {}).get("tax_rate_bps", invoice.tax_rate_bps))
    credit_notes = sorted(invoice.credit_notes.all(), key=lambda note: note.issued_at)
    return render(
        request,
        "portal/buyer/invoice.html",
        {
            "invoice": invoice,
            "doc": doc,
            "tax_rate": f"{bps // 100}.{bps % 100:02d}%",
            "credit_notes": credit_notes,
        },
    )


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def invoice_pdf(request: HttpRequest, invoice_id: int) -> HttpResponse:
    invoice = _invoice(request, invoice_id)
    response = HttpResponse(invoice_documents.invoice_pdf(invoice), content_type="application/pdf")
    name = invoice.number or f"draft-{invoice.pk}"
    response["Content-Disposition"] = f'inline; filename="{name}.pdf"'
    return response
