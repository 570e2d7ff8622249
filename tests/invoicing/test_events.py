"""The invoices' events as types: each keeps the ``type`` and the payload fields it
has always been stored under (replay and rows written before the types existed
depend on both), on the stream ``invoice:<key>``."""

from __future__ import annotations

from dataclasses import fields

import pytest

from core.models import Event
from invoicing.credit_notes import credit_note_issue
from invoicing.events import (
    INVOICE_STREAM,
    CreditNoteIssued,
    InvoiceFinalized,
    InvoicePaid,
    InvoicePastDue,
    InvoiceUncollectible,
    InvoiceVoided,
)
from invoicing.lifecycle import invoice_mark_paid, invoice_mark_past_due
from invoicing.models import CreditNote, Invoice
from invoicing.month_close import period_close
from invoicing.replay import invoices_rebuild
from tests.invoicing.world import CLOSE_AT, PERIOD, taxed_month

# The names and payload fields as stored; written out, not taken from the classes.
STORED = {
    "InvoiceFinalized": {
        "key", "number", "organization", "kind", "currency", "period_start", "period_end",
        "job", "issuer", "finalized_at", "due_at", "as_of_position", "buyer",
        "prepaid_applied_micros", "credit_applied_at_finalize_micros", "total_micros",
        "document_sha256",
    },
    "InvoicePaid": {"key", "payment_reference", "amount_micros", "at"},
    "InvoicePastDue": {"key", "at"},
    "InvoiceMarkedUncollectible": {"key", "amount_micros", "reason", "at"},
    "InvoiceVoided": {"key", "reason", "at"},
    "CreditNoteIssued": {
        "key", "credit_note", "note_key", "amount_micros", "tax_micros",
        "to_receivable_micros", "to_credit_micros", "reason", "at",
    },
}  # fmt: skip
TYPES = (
    InvoiceFinalized,
    InvoicePaid,
    InvoicePastDue,
    InvoiceUncollectible,
    InvoiceVoided,
    CreditNoteIssued,
)


def test_each_invoice_event_type_keeps_the_name_and_fields_it_is_stored_under():
    assert INVOICE_STREAM == "billing.invoice"
    assert [cls.type for cls in TYPES] == list(STORED)
    for cls in TYPES:
        assert cls.schema_version == 1
        assert {f.name for f in fields(cls)} == STORED[cls.type], cls.type


def test_an_event_names_its_invoice_stream_and_its_payload_is_its_fields_in_order():
    event = InvoicePaid(key="org-7:2026-10", payment_reference="pi_1", amount_micros=5, at="t")
    assert event.stream_id() == "invoice:org-7:2026-10"
    assert list(event.payload()) == ["key", "payment_reference", "amount_micros", "at"]
    stored = event.to_new_event()
    assert (stored.type, stored.schema_version) == ("InvoicePaid", 1)
    assert stored.payload == {
        "key": "org-7:2026-10",
        "payment_reference": "pi_1",
        "amount_micros": 5,
        "at": "t",
    }


@pytest.fixture
def month(cast):
    return taxed_month(cast, events_per_buyer=60)


def test_the_stored_rows_keep_their_types_and_shapes_and_replay_reads_them(month):
    cast = month
    # given a closed month (one invoice settled by prepaid credit at once), the other
    # credited, past due and then paid
    period_close(period=PERIOD, now=CLOSE_AT)
    a = Invoice.objects.get(organization=cast.buyer_a)
    b = Invoice.objects.get(organization=cast.buyer_b)
    credit_note_issue(invoice=b, amount_micros=1_000_000, reason="goodwill", key="cn-e")
    invoice_mark_past_due(invoice=b)
    invoice_mark_paid(invoice=b, payment_reference="pi_e")

    # then every row on the invoices' stream has the stored name and fields
    rows = list(Event.objects.filter(stream_type=INVOICE_STREAM).order_by("position"))
    for row in rows:
        assert set(row.payload) == STORED[row.type], row.type
        assert row.stream_id == f"invoice:{row.payload['key']}"
        assert row.schema_version == 1
    assert sorted(row.type for row in rows) == sorted(
        [
            "InvoiceFinalized",
            "InvoiceFinalized",
            "CreditNoteIssued",
            "InvoicePaid",
            "InvoicePastDue",
        ]
    )

    # and replay, which reads them by type, rebuilds both invoices as they were
    def state() -> dict[str, tuple[str, int, int]]:
        return {
            i.key: (i.status, i.credited_micros, i.written_off_micros)
            for i in Invoice.objects.all()
        }

    before = state()
    assert invoices_rebuild() == 2
    after = state()
    assert after == before
    assert after[a.key][0] == "paid" and after[b.key][0] == "paid"
    assert CreditNote.objects.filter(invoice__key=b.key).count() == 1
