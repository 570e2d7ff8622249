"""Replay: the accruals and every invoice rebuilt from the event store alone, each
finalized invoice recomputed as of its finalization, settled by the same rule
(invoicing/settlement.py) and checked against the hash its event recorded."""

from __future__ import annotations

import hashlib
from datetime import datetime

from django.db import transaction

from core.followers import followers_run_until_idle
from core.models import Event, FollowerPosition, Organization
from invoicing.accruals import usage_accruals
from invoicing.calculations import invoice_compute
from invoicing.documents import _document, canonical
from invoicing.events import (
    INVOICE_STREAM,
    CreditNoteIssued,
    InvoiceFinalized,
    InvoicePaid,
    InvoicePastDue,
    InvoiceUncollectible,
    InvoiceVoided,
)
from invoicing.finalization import _set_final
from invoicing.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceLineEntry,
    UsageAccrual,
)
from invoicing.periods import grace
from invoicing.settlement import settle
from invoicing.writers import _write_lines
from ledger import events as ev

# --- replay -------------------------------------------------------------------------


def invoices_rebuild() -> int:
    """Rebuild the accruals and every invoice from the event store alone: the accrual
    follower replays the usage batches from position 0, then each invoice's events
    are applied in order, a finalized invoice recomputed as of its finalization and
    checked against the hash its event recorded. Returns the invoices rebuilt."""

    with transaction.atomic():
        InvoiceLineEntry.objects.all().delete()
        InvoiceLine.objects.all().delete()
        CreditNote.objects.all().delete()
        Invoice.objects.all().delete()
        UsageAccrual.objects.all().delete()
        FollowerPosition.objects.filter(consumer=usage_accruals.name).update(position=0)
    followers_run_until_idle([usage_accruals])
    rebuilt = 0
    with transaction.atomic():
        events = Event.objects.filter(stream_type=INVOICE_STREAM).order_by("position")
        for event in events.iterator():
            _replay_one(event)
            rebuilt += event.type == InvoiceFinalized.type
    return rebuilt


def _replay_one(event: Event) -> None:
    payload = event.payload
    if event.type == InvoiceFinalized.type:
        organization = Organization.objects.get(pk=payload["organization"])
        invoice = Invoice(
            key=payload["key"],
            organization=organization,
            kind=payload["kind"],
            currency=payload["currency"],
            period_start=datetime.fromisoformat(payload["period_start"]),
            period_end=datetime.fromisoformat(payload["period_end"]),
            job=payload["job"],
            issuer=payload["issuer"],
            number=payload["number"],
            generated_at=datetime.fromisoformat(payload["finalized_at"]),
            grace_ends_at=datetime.fromisoformat(payload["period_end"]) + grace(),
            finalized_at=datetime.fromisoformat(payload["finalized_at"]),
            due_at=datetime.fromisoformat(payload["due_at"]),
        )
        computed = invoice_compute(
            organization=organization,
            currency=invoice.currency,
            period=invoice.period_start.date() if invoice.kind == Invoice.Kind.MONTHLY else None,
            job=invoice.job if invoice.kind == Invoice.Kind.JOB else None,
            as_of_position=payload["as_of_position"],
        )
        buyer = payload["buyer"]
        # The finalization rule again, with the credit it found to apply then.
        applied = payload.get(
            "credit_applied_at_finalize_micros",
            payload["prepaid_applied_micros"] - computed.prepaid_micros,
        )
        settlement = settle(
            computed,
            currency=invoice.currency,
            tax_rate_bps=buyer["tax_rate_bps"],
            available_credit_micros=applied,
        )
        totals, prepaid = settlement.totals, settlement.prepaid_micros
        document = _document(
            invoice=invoice,
            computed=computed,
            totals=totals,
            buyer=buyer,
            number=invoice.number,
            finalized_at=payload["finalized_at"],
            due_at=payload["due_at"],
            prepaid_applied=prepaid,
        )
        digest = hashlib.sha256(canonical(document)).hexdigest()
        if digest != payload["document_sha256"]:
            raise RuntimeError(f"replayed invoice {invoice.number} differs from the one finalized")
        _set_final(
            invoice,
            number=payload["number"],
            finalized_at=datetime.fromisoformat(payload["finalized_at"]),
            due_at=datetime.fromisoformat(payload["due_at"]),
            totals=totals,
            prepaid=prepaid,
            document=document,
            digest=digest,
        )
        invoice.save()
        _write_lines(invoice, computed)
        return
    invoice = Invoice.objects.get(key=payload["key"])
    at = datetime.fromisoformat(payload["at"]) if "at" in payload else event.recorded_at
    if event.type == InvoicePaid.type:
        invoice.status = Invoice.Status.PAID
        invoice.amount_paid_micros += payload["amount_micros"]
        invoice.payment_reference = payload["payment_reference"]
        invoice.closed_at = at
    elif event.type == InvoicePastDue.type:
        invoice.status = Invoice.Status.PAST_DUE
    elif event.type == InvoiceUncollectible.type:
        invoice.status = Invoice.Status.UNCOLLECTIBLE
        invoice.written_off_micros += payload["amount_micros"]
        invoice.closed_at = at
    elif event.type == InvoiceVoided.type:
        invoice.status = Invoice.Status.VOID
        invoice.closed_at = at
    elif event.type == CreditNoteIssued.type:
        entry = Event.objects.get(stream_id=ev.entry_stream_id(f"cn:{payload['credit_note']}"))
        CreditNote.objects.create(
            invoice=invoice,
            key=payload["note_key"],
            issuer=invoice.issuer,
            number=payload["credit_note"],
            currency=invoice.currency,
            amount_micros=payload["amount_micros"],
            tax_micros=payload["tax_micros"],
            total_micros=payload["amount_micros"] + payload["tax_micros"],
            to_receivable_micros=payload["to_receivable_micros"],
            to_credit_micros=payload["to_credit_micros"],
            reason=payload["reason"],
            entry_position=entry.position,
            issued_at=at,
            issued_by=event.metadata.get("actor", ""),
        )
        invoice.credited_micros += payload["amount_micros"] + payload["tax_micros"]
    invoice.save()
