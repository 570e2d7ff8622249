from __future__ import annotations

from django.urls import path

from billing.apis import (
    AccountCreditLimitApi,
    AccountDetailApi,
    AccountListApi,
    AdjustmentCreateApi,
    BillingProfileGetApi,
    BillingProfileSetApi,
    CreditNoteCreateApi,
    CreditNoteListApi,
    FineTuneEstimateApi,
    InvoiceDetailApi,
    InvoiceDraftApi,
    InvoiceFinalizeApi,
    InvoiceHtmlApi,
    InvoiceListApi,
    InvoiceMarkPaidApi,
    InvoiceMarkUncollectibleApi,
    InvoicePdfApi,
    InvoiceVoidApi,
    JobInvoiceIssueApi,
    JournalLineListApi,
    PricePublicListApi,
    PriceScheduleCreateApi,
    PriceScheduleListApi,
    ProviderStatementDetailApi,
    ProviderStatementListApi,
    TrialBalanceApi,
)
from core.routing import by_method

urlpatterns = [
    path("accounts/", AccountListApi.as_view(), name="accounts"),
    path("accounts/<id:account_id>/", AccountDetailApi.as_view(), name="account-detail"),
    path(
        "accounts/<id:account_id>/credit-limit",
        AccountCreditLimitApi.as_view(),
        name="account-credit-limit",
    ),
    path("journal/", JournalLineListApi.as_view(), name="journal"),
    path("journal/adjustments", AdjustmentCreateApi.as_view(), name="journal-adjustments"),
    path("trial-balance/", TrialBalanceApi.as_view(), name="trial-balance"),
    # the price book
    path("prices/", PricePublicListApi.as_view(), name="prices"),
    path(
        "prices/schedule",
        by_method(get=PriceScheduleListApi, post=PriceScheduleCreateApi),
        name="prices-schedule",
    ),
    path("prices/fine-tune-estimate", FineTuneEstimateApi.as_view(), name="fine-tune-estimate"),
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
