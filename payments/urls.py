from __future__ import annotations

from django.urls import path

from payments.apis.invoice_payments import (
    InvoiceCollectionApi,
    InvoicePaymentDetailApi,
    InvoicePaymentListApi,
    InvoicePaymentRefundApi,
    InvoicePaymentRetryApi,
)
from payments.apis.payouts import (
    AccountLinkApi,
    ConnectedAccountApi,
    PayoutDetailApi,
    PayoutListApi,
)
from payments.apis.reconciliation import ReconciliationApi
from payments.apis.stripe_webhook import StripeWebhookApi
from payments.apis.top_ups import (
    AutoRechargeApi,
    PaymentMethodSaveApi,
    RefundCreateApi,
    TopUpCheckoutApi,
    TopUpDetailApi,
    TopUpListCreateApi,
)

urlpatterns = [
    path("billing/top-ups", TopUpListCreateApi.as_view(), name="top-ups"),
    path("billing/top-ups/checkout", TopUpCheckoutApi.as_view(), name="top-ups-checkout"),
    path("billing/top-ups/<id:top_up_id>", TopUpDetailApi.as_view(), name="top-up-detail"),
    path(
        "billing/top-ups/<id:top_up_id>/refunds",
        RefundCreateApi.as_view(),
        name="top-up-refunds",
    ),
    path("billing/payment-methods", PaymentMethodSaveApi.as_view(), name="payment-methods"),
    path("billing/auto-recharge", AutoRechargeApi.as_view(), name="auto-recharge"),
    path("billing/invoice-payments", InvoicePaymentListApi.as_view(), name="invoice-payments"),
    path(
        "billing/invoice-payments/retry",
        InvoicePaymentRetryApi.as_view(),
        name="invoice-payments-retry",
    ),
    path(
        "billing/invoice-payments/<id:payment_id>",
        InvoicePaymentDetailApi.as_view(),
        name="invoice-payment-detail",
    ),
    path(
        "billing/invoice-payments/<id:payment_id>/refunds",
        InvoicePaymentRefundApi.as_view(),
        name="invoice-payment-refunds",
    ),
    path(
        "billing/invoice-collections/<id:invoice_id>",
        InvoiceCollectionApi.as_view(),
        name="invoice-collection",
    ),
    path("billing/reconciliation", ReconciliationApi.as_view(), name="stripe-reconciliation"),
    path("stripe/webhook", StripeWebhookApi.as_view(), name="stripe-webhook"),
    path("payouts/account", ConnectedAccountApi.as_view(), name="connected-account"),
    path("payouts/account/link", AccountLinkApi.as_view(), name="connected-account-link"),
    path("payouts/", PayoutListApi.as_view(), name="payouts"),
    path("payouts/<id:payout_id>", PayoutDetailApi.as_view(), name="payout-detail"),
]
