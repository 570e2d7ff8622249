"""Invoicing's public writes, for the apps above it (payments, exports, portal) and the
operator's commands: drafts, finalization and the month close, an invoice's
lifecycle, credit notes, job invoices, billing profiles and provider statements.
Reads are in ``selectors``."""

from __future__ import annotations

from invoicing.accruals import PRODUCT_OF, usage_accruals
from invoicing.credit_notes import credit_note_issue
from invoicing.drafts import invoice_draft_current, invoice_draft_refresh
from invoicing.finalization import invoice_finalize
from invoicing.job_invoices import invoice_job_issue, invoice_job_request
from invoicing.lifecycle import (
    invoice_finalize_requested,
    invoice_mark_paid,
    invoice_mark_past_due,
    invoice_mark_uncollectible,
    invoice_void,
)
from invoicing.month_close import CloseResult, period_close
from invoicing.profiles import (
    MAX_ADDRESS_LENGTH,
    MAX_LEGAL_NAME_LENGTH,
    billing_details_set,
    billing_profile_set,
)
from invoicing.replay import invoices_rebuild
from invoicing.statements import statements_close

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "MAX_LEGAL_NAME_LENGTH",
    "PRODUCT_OF",
    "CloseResult",
    "billing_details_set",
    "billing_profile_set",
    "credit_note_issue",
    "invoice_draft_current",
    "invoice_draft_refresh",
    "invoice_finalize",
    "invoice_finalize_requested",
    "invoice_job_issue",
    "invoice_job_request",
    "invoice_mark_paid",
    "invoice_mark_past_due",
    "invoice_mark_uncollectible",
    "invoice_void",
    "invoices_rebuild",
    "period_close",
    "statements_close",
    "usage_accruals",
]
