"""The ledger's routes under /api/v1/ (config/urls.py)."""

from __future__ import annotations

from django.urls import path

from ledger.apis import (
    AccountCreditLimitApi,
    AccountDetailApi,
    AccountListApi,
    AdjustmentCreateApi,
    JournalLineListApi,
    TrialBalanceApi,
)

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
]
