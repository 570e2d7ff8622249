"""Events."""

from __future__ import annotations

INVOICE_STREAM = "billing.invoice"
INVOICE_FINALIZED = "InvoiceFinalized"
INVOICE_PAID = "InvoicePaid"
INVOICE_PAST_DUE = "InvoicePastDue"
INVOICE_UNCOLLECTIBLE = "InvoiceMarkedUncollectible"
INVOICE_VOIDED = "InvoiceVoided"
CREDIT_NOTE_ISSUED = "CreditNoteIssued"
