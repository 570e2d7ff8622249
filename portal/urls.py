"""The portal's pages (config.urls includes them at the root)."""

from __future__ import annotations

from django.contrib.auth import views as auth
from django.urls import path, reverse_lazy

from portal.forms import SignInForm
from portal.views import (
    account,
    buyer,
    buyer_checkout,
    buyer_files,
    buyer_invoices,
    buyer_jobs,
    buyer_models,
    buyer_orders,
    buyer_recharge,
    buyer_usage,
    finance,
    finance_books,
    finance_exports,
    finance_invoices,
    keys,
    provider,
    provider_breakdown,
    provider_earnings,
    provider_offers,
    provider_supply,
    provider_telemetry,
    team,
)

app_name = "portal"

urlpatterns = [
    path("", account.home, name="home"),
    path("home/", account.overview, name="overview"),
    path("sign-up/", account.sign_up, name="sign-up"),
    path(
        "sign-in/",
        auth.LoginView.as_view(
            template_name="portal/auth/sign_in.html",
            authentication_form=SignInForm,
            redirect_authenticated_user=True,
        ),
        name="sign-in",
    ),
    path("sign-out/", auth.LogoutView.as_view(), name="sign-out"),
    path(
        "password-reset/",
        auth.PasswordResetView.as_view(
            template_name="portal/auth/password_reset.html",
            email_template_name="portal/email/password_reset.txt",
            subject_template_name="portal/email/password_reset_subject.txt",
            success_url=reverse_lazy("portal:password-reset-sent"),
        ),
        name="password-reset",
    ),
    path(
        "password-reset/sent/",
        auth.PasswordResetDoneView.as_view(template_name="portal/auth/password_reset_sent.html"),
        name="password-reset-sent",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth.PasswordResetConfirmView.as_view(
            template_name="portal/auth/password_reset_confirm.html",
            success_url=reverse_lazy("portal:password-reset-complete"),
        ),
        name="password-reset-confirm",
    ),
    path(
        "password-reset/complete/",
        auth.PasswordResetCompleteView.as_view(
            template_name="portal/auth/password_reset_complete.html"
        ),
        name="password-reset-complete",
    ),
    path("organization", account.organization_switch, name="organization-switch"),
    path("keys/", keys.key_list, name="keys"),
    path("keys/new", keys.key_create, name="key-create"),
    path("keys/<id:api_key_id>/revoke", keys.key_revoke, name="key-revoke"),
    path("team/", team.team, name="team"),
    path("team/invite", team.member_invite, name="member-invite"),
    path("team/<id:membership_id>/role", team.member_role_change, name="member-role"),
    path("team/<id:membership_id>/remove", team.member_remove, name="member-remove"),
    path("console/", buyer.dashboard, name="console"),
    path("console/top-up", buyer_checkout.top_up, name="top-up"),
    path("console/top-ups/<id:top_up_id>/", buyer_checkout.top_up_return, name="top-up-return"),
    path("console/auto-recharge", buyer_recharge.auto_recharge, name="auto-recharge"),
    path(
        "console/auto-recharge/change",
        buyer_recharge.auto_recharge_change,
        name="auto-recharge-change",
    ),
    path("console/invoices/", buyer_invoices.invoice_list, name="invoices"),
    path("console/invoices/<id:invoice_id>/", buyer_invoices.invoice_detail, name="invoice"),
    path("console/invoices/<id:invoice_id>.pdf", buyer_invoices.invoice_pdf, name="invoice-pdf"),
    path("console/usage/", buyer_usage.usage, name="console-usage"),
    path("console/usage.csv", buyer_usage.usage_csv, name="console-usage-csv"),
    path("console/jobs/", buyer_jobs.job_list, name="console-jobs"),
    path("console/jobs/new", buyer_jobs.job_create, name="console-job-create"),
    path("console/jobs/<slug:job_id>/", buyer_jobs.job_detail, name="console-job"),
    path(
        "console/jobs/<slug:job_id>/progress",
        buyer_jobs.job_progress,
        name="console-job-progress",
    ),
    path("console/jobs/<slug:job_id>/cancel", buyer_jobs.job_cancel, name="console-job-cancel"),
    path("console/orders/", buyer_orders.order_list, name="console-orders"),
    path("console/orders/<id:order_id>/", buyer_orders.order_detail, name="console-order"),
    path(
        "console/orders/<id:order_id>/cancel",
        buyer_orders.order_cancel,
        name="console-order-cancel",
    ),
    path("console/leases/", buyer_orders.lease_list, name="console-leases"),
    path("console/files/", buyer_files.file_list, name="console-files"),
    path("console/files/upload", buyer_files.file_upload, name="console-file-upload"),
    path(
        "console/files/<slug:file_id>/delete",
        buyer_files.file_delete,
        name="console-file-delete",
    ),
    path("console/models/", buyer_models.model_list, name="console-models"),
    path(
        "console/deployments/<slug:deployment_id>/stop",
        buyer_models.deployment_stop,
        name="console-deployment-stop",
    ),
    path("provider/", provider.overview, name="provider"),
    path("provider/sites/", provider_supply.site_list, name="provider-sites"),
    path("provider/sites/new", provider_supply.site_create, name="provider-site-create"),
    path("provider/nodes/", provider_supply.node_list, name="provider-nodes"),
    path("provider/nodes/<id:node_id>/", provider_supply.node_detail, name="provider-node"),
    path(
        "provider/nodes/<id:node_id>/telemetry",
        provider_supply.node_telemetry,
        name="provider-node-telemetry",
    ),
    path(
        "provider/nodes/<id:node_id>/history",
        provider_telemetry.node_history,
        name="provider-node-history",
    ),
    path("provider/offers/", provider_offers.offer_list, name="provider-offers"),
    path("provider/offers/new", provider_offers.offer_create, name="provider-offer-create"),
    path("provider/offers/<id:offer_id>/", provider_offers.offer_detail, name="provider-offer"),
    path(
        "provider/offers/<id:offer_id>/pause",
        provider_offers.offer_pause,
        name="provider-offer-pause",
    ),
    path(
        "provider/offers/<id:offer_id>/resume",
        provider_offers.offer_resume,
        name="provider-offer-resume",
    ),
    path(
        "provider/offers/<id:offer_id>/reprice",
        provider_offers.offer_reprice,
        name="provider-offer-reprice",
    ),
    path(
        "provider/offers/<id:offer_id>/withdraw",
        provider_offers.offer_withdraw,
        name="provider-offer-withdraw",
    ),
    path("provider/leases/", provider_offers.lease_list, name="provider-leases"),
    path("provider/agent-keys/", provider_supply.agent_key_list, name="provider-agent-keys"),
    path(
        "provider/agent-keys/new",
        provider_supply.agent_key_create,
        name="provider-agent-key-create",
    ),
    path(
        "provider/agent-keys/<id:agent_key_id>/revoke",
        provider_supply.agent_key_revoke,
        name="provider-agent-key-revoke",
    ),
    path("provider/earnings/", provider_earnings.earnings, name="provider-earnings"),
    # before the statements' <period>: “breakdown” is no month
    path(
        "provider/earnings/breakdown/",
        provider_breakdown.breakdown,
        name="provider-earnings-breakdown",
    ),
    path(
        "provider/earnings/breakdown.csv",
        provider_breakdown.breakdown_csv,
        name="provider-earnings-breakdown-csv",
    ),
    path(
        "provider/earnings/<str:period>/",
        provider_earnings.statement_detail,
        name="provider-statement",
    ),
    path(
        "provider/earnings/<str:period>.csv",
        provider_earnings.statement_csv,
        name="provider-statement-csv",
    ),
    path("provider/payouts/", provider_earnings.payout_list, name="provider-payouts"),
    path(
        "provider/payouts/onboarding",
        provider_earnings.connect_onboarding,
        name="provider-connect-onboarding",
    ),
    # the operator's finance staff
    path("finance/", finance.overview, name="finance"),
    path("finance/trial-balance/", finance.trial_balance, name="finance-trial-balance"),
    path("finance/journal/", finance.journal, name="finance-journal"),
    path("finance/accounts/", finance.account_list, name="finance-accounts"),
    path("finance/invoices/", finance_invoices.invoice_list, name="finance-invoices"),
    path(
        "finance/invoices/<id:invoice_id>/",
        finance_invoices.invoice_detail,
        name="finance-invoice",
    ),
    path(
        "finance/invoices/<id:invoice_id>/issue",
        finance_invoices.invoice_issue,
        name="finance-invoice-issue",
    ),
    path(
        "finance/invoices/<id:invoice_id>/void",
        finance_invoices.invoice_void,
        name="finance-invoice-void",
    ),
    path(
        "finance/invoices/<id:invoice_id>/mark-paid",
        finance_invoices.invoice_mark_paid,
        name="finance-invoice-mark-paid",
    ),
    path(
        "finance/invoices/<id:invoice_id>.pdf",
        finance_invoices.invoice_pdf,
        name="finance-invoice-pdf",
    ),
    path("finance/close/", finance_invoices.month_close, name="finance-close"),
    path("finance/liability/", finance_books.liability, name="finance-liability"),
    path("finance/aging/", finance_books.aging, name="finance-aging"),
    path("finance/reconciliation/", finance_books.reconciliation, name="finance-reconciliation"),
    path("finance/payouts/", finance_books.payouts_due, name="finance-payouts"),
    path("finance/exports/", finance_exports.export_list, name="finance-exports"),
    path("finance/exports/new", finance_exports.export_create, name="finance-export-create"),
    path("finance/exports/rows", finance_exports.export_rows, name="finance-export-rows"),
    path(
        "finance/exports/<id:export_id>/download",
        finance_exports.export_download,
        name="finance-export-download",
    ),
    path("finance/statements/", finance_exports.statement_list, name="finance-statements"),
    path(
        "finance/statements/<id:organization_id>/<str:period>/",
        finance_exports.statement_detail,
        name="finance-statement",
    ),
]
