"""The invoices' event stream (``billing.invoice:<key>``) and its event types:
finalized, paid, past due, uncollectible, voided, and credit notes issued. The
stream's name predates the apps' split and stays: the stored events carry it."""

from __future__ import annotations

INVOICE_STREAM = "billing.invoice"
INVOICE_FINALIZED = "InvoiceFinalized"
INVOICE_PAID = "InvoicePaid"
INVOICE_PAST_DUE = "InvoicePastDue"
INVOICE_UNCOLLECTIBLE = "InvoiceMarkedUncollectible"
INVOICE_VOIDED = "InvoiceVoided"
CREDIT_NOTE_ISSUED = "CreditNoteIssued"
