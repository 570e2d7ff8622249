"""Invoices, credit notes, billing profiles and providers' statements under /api/v1/
(config/urls.py)."""

from __future__ import annotations

from django.urls import path

from core.routing import by_method
from invoicing.apis.credit_notes import CreditNoteCreateApi, CreditNoteListApi
from invoicing.apis.invoice_documents import InvoiceHtmlApi, InvoicePdfApi
from invoicing.apis.invoices import InvoiceDetailApi, InvoiceDraftApi, InvoiceListApi
from invoicing.apis.lifecycle import (
    InvoiceFinalizeApi,
    InvoiceMarkPaidApi,
    InvoiceMarkUncollectibleApi,
    InvoiceVoidApi,
    JobInvoiceIssueApi,
)
from invoicing.apis.profiles import BillingProfileGetApi, BillingProfileSetApi
from invoicing.apis.statements import ProviderStatementDetailApi, ProviderStatementListApi

urlpatterns = [
    # invoices and credit notes
    path("invoices/", InvoiceListApi.as_view(), name="invoices"),
    path("invoices/draft", InvoiceDraftApi.as_view(), name="invoice-draft"),
    path("invoices/job", JobInvoiceIssueApi.as_view(), name="invoice-job"),
    path("invoices/<id:invoice_id>", InvoiceDetailApi.as_view(), name="invoice-detail"),
    path("invoices/<id:invoice_id>.html", InvoiceHtmlApi.as_view(), name="invoice-html"),
    path("invoices/<id:invoice_id>.pdf", InvoicePdfApi.as_view(), name="invoice-pdf"),
    path(
        "invoices/<id:invoice_id>/credit-notes",
        by_method(get=CreditNoteListApi, post=CreditNoteCreateApi),
        name="invoice-credit-notes",
    ),
    path(
        "invoices/<id:invoice_id>/finalize",
        InvoiceFinalizeApi.as_view(),
        name="invoice-finalize",
    ),
    path("invoices/<id:invoice_id>/void", InvoiceVoidApi.as_view(), name="invoice-void"),
    path(
        "invoices/<id:invoice_id>/mark-uncollectible",
        InvoiceMarkUncollectibleApi.as_view(),
        name="invoice-mark-uncollectible",
    ),
    path(
        "invoices/<id:invoice_id>/mark-paid",
        InvoiceMarkPaidApi.as_view(),
        name="invoice-mark-paid",
    ),
    path(
        "billing-profiles/<id:organization_id>",
        by_method(get=BillingProfileGetApi, put=BillingProfileSetApi),
        name="billing-profile",
    ),
    # providers' monthly statements
    path("statements/", ProviderStatementListApi.as_view(), name="statements"),
    path("statements/<str:period>", ProviderStatementDetailApi.as_view(), name="statement"),
]
