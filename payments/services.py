"""Writes of payments: top-ups, refunds, disputes, connected accounts, payouts.

Two habits run through these modules:

- Stripe is never called inside a database transaction. A service records what it
  intends (a row, a ledger hold), commits, calls Stripe with an idempotency key
  derived from that row, then records the answer in a second transaction. A crash
  between the steps leaves a row that the next run (or the webhook) completes.
- Every movement of money is a journal entry through ledger.services with an id
  derived from our row or Stripe's object (``topup:<id>``, ``refund:<id>``,
  ``dispute:<dp_…>``, ``payout:<id>``), so doing a step twice moves nothing twice.

Accounts: a top-up debits the platform's ``stripe_clearing`` and credits the buyer's
prepaid ``credit``; a refund or a lost dispute reverses that from the unused credit
and, for credit already spent, from the buyer's ``receivable``; a payout moves the
provider's ``payable`` to ``stripe_clearing``. Stripe clearing is then what Stripe
holds for the platform, which the daily reconciliation checks.

The writes live in modules named for their role, and this module is their public
surface (for the apps above, and for payments' own apis, tasks and webhooks):
``customers`` (a buyer's Stripe customer and saved method), ``payment_methods``
(the saved cards: the default, removing one), ``top_ups``, ``refunds``
(and the claw-back disputes share), ``disputes``, ``auto_recharge``, ``connect``
(providers' Connect accounts), ``payouts``; collecting invoices in ``collection`` (the
schedule, starting a collection, its follower), ``invoice_payments`` (an attempt sent
to Stripe and its answers), ``dunning`` (retries) and ``invoice_refunds``; what they
share in ``common``.
"""

from __future__ import annotations

from payments.auto_recharge import auto_recharge_check, auto_recharge_set
from payments.collection import collectible_micros, invoice_collection_start, retry_days
from payments.common import (
    ACTOR,
    INVOICE_PAYMENT_SUBMIT_TASK,
    STRIPE_EVENT_PROCESS_TASK,
    TOP_UP_SUBMIT_TASK,
    ProcessLater,
    credit_available,
)
from payments.connect import (
    account_link_create,
    connected_account_create,
    connected_account_record,
    connected_account_sync,
)
from payments.customers import customer_ensure, payment_method_save
from payments.disputes import dispute_apply
from payments.dunning import DunningRun, invoice_collection_retry, invoice_dunning_run
from payments.invoice_payments import (
    charge_minor,
    invoice_payment_apply_intent,
    invoice_payment_cancel,
    invoice_payment_record_failure,
    invoice_payment_submit,
    is_invoice_payment,
)
from payments.invoice_refunds import (
    RefundNotReady,
    invoice_payment_refund,
    invoice_payment_refundable,
    invoice_refund_apply_from_stripe,
    invoice_refund_settle,
)
from payments.payment_methods import payment_method_make_default, payment_method_remove
from payments.payouts import (
    PAYOUT_HOLD_TIMEOUT,
    Checkpoint,
    PayoutRun,
    lookup_payout,
    payout_apply_transfer,
    payout_plan,
    payout_record_failed,
    payout_record_paid,
    payout_submit,
    payouts_run,
)
from payments.refunds import (
    REFUND_HOLD_TIMEOUT,
    refund_apply_from_stripe,
    refund_create,
    refund_fail,
    refund_settle,
    refund_submit,
    top_up_claw_back,
    top_up_refundable,
)
from payments.stripe_client import PaymentFailed, PaymentsUnavailable, stripe_configured
from payments.top_ups import (
    TopUpStarted,
    checkout_session_create,
    top_up_apply_checkout_session,
    top_up_apply_payment_intent,
    top_up_check_amount,
    top_up_mark,
    top_up_record,
    top_up_submit,
    top_ups_resume,
)

__all__ = [
    "ACTOR",
    "INVOICE_PAYMENT_SUBMIT_TASK",
    "PAYOUT_HOLD_TIMEOUT",
    "REFUND_HOLD_TIMEOUT",
    "STRIPE_EVENT_PROCESS_TASK",
    "TOP_UP_SUBMIT_TASK",
    "Checkpoint",
    "DunningRun",
    "PaymentFailed",
    "PaymentsUnavailable",
    "PayoutRun",
    "ProcessLater",
    "RefundNotReady",
    "TopUpStarted",
    "account_link_create",
    "auto_recharge_check",
    "auto_recharge_set",
    "charge_minor",
    "checkout_session_create",
    "collectible_micros",
    "connected_account_create",
    "connected_account_record",
    "connected_account_sync",
    "credit_available",
    "customer_ensure",
    "dispute_apply",
    "invoice_collection_retry",
    "invoice_collection_start",
    "invoice_dunning_run",
    "invoice_payment_apply_intent",
    "invoice_payment_cancel",
    "invoice_payment_record_failure",
    "invoice_payment_refund",
    "invoice_payment_refundable",
    "invoice_payment_submit",
    "invoice_refund_apply_from_stripe",
    "invoice_refund_settle",
    "is_invoice_payment",
    "lookup_payout",
    "payment_method_make_default",
    "payment_method_remove",
    "payment_method_save",
    "payout_apply_transfer",
    "payout_plan",
    "payout_record_failed",
    "payout_record_paid",
    "payout_submit",
    "payouts_run",
    "refund_apply_from_stripe",
    "refund_create",
    "refund_fail",
    "refund_settle",
    "refund_submit",
    "retry_days",
    "stripe_configured",
    "top_up_apply_checkout_session",
    "top_up_apply_payment_intent",
    "top_up_check_amount",
    "top_up_claw_back",
    "top_up_mark",
    "top_up_record",
    "top_up_refundable",
    "top_up_submit",
    "top_ups_resume",
]
