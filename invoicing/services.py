"""The public surface."""

from __future__ import annotations

# The app's public surface: other apps import these names from here.
from invoicing.credit_notes import credit_note_issue
from invoicing.drafts import invoice_draft_current, invoice_draft_refresh
from invoicing.job_invoices import invoice_job_issue, invoice_job_request
from invoicing.lifecycle import (
    invoice_finalize_requested,
    invoice_mark_paid,
    invoice_mark_uncollectible,
    invoice_void,
)
from invoicing.profiles import MAX_ADDRESS_LENGTH, billing_profile_set
from invoicing.settlement import outstanding

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "billing_profile_set",
    "credit_note_issue",
    "invoice_draft_current",
    "invoice_draft_refresh",
    "invoice_finalize_requested",
    "invoice_job_issue",
    "invoice_job_request",
    "invoice_mark_paid",
    "invoice_mark_uncollectible",
    "invoice_void",
    "outstanding",
]
