"""Invoices: a generated month closes into invoices equal to the ledger, to the
micro-unit before rounding and to the cent after; replays are byte-identical;
finalized invoices do not change; credit notes and voids correct them."""

from __future__ import annotations

import io
from collections import defaultdict
from datetime import timedelta

import pytest
from pypdf import PdfReader

from core.errors import Conflict
from core.models import Event
from core.money import Money
from invoicing.credit_notes import credit_note_issue
from invoicing.documents import invoice_html, invoice_json, invoice_pdf
from invoicing.drafts import invoice_draft_refresh
from invoicing.lifecycle import invoice_mark_paid, invoice_void
from invoicing.models import Invoice, InvoiceLineEntry, UsageAccrual
from invoicing.month_close import period_close
from invoicing.replay import invoices_rebuild
from invoicing.settlement import outstanding
from ledger import services
from ledger.models import Account, Posting
from tests.invoicing.world import (
    CLOSE_AT,
    PERIOD,
    START,
    balance,
    event,
    platform,
    record,
    settle,
    taxed_month,
)

pytestmark = pytest.mark.django_db


def _usage_debits(org) -> int:
    """What rating charged the org, from the journal alone (entries usage:*)."""
    accounts = list(
        Account.objects.filter(organization=org, kind__in=["credit", "receivable"]).values_list(
            "pk", flat=True
        )
    )
    total = 0
    for posting in Posting.objects.filter(account_id__in=accounts, side="D"):
        entry = Event.objects.get(position=posting.entry_id)
        if entry.payload.get("transfer_id", "").startswith("usage:"):
            total += posting.amount_micros
    return total


@pytest.fixture
def month(cast):
    return taxed_month(cast, events_per_buyer=300)


def test_a_closed_month_equals_the_ledger_to_the_micro_unit_and_the_cent(month):
    cast = month
    result = period_close(period=PERIOD, now=CLOSE_AT)
    assert result.finalized == 2 and result.drafts == 0
    invoices = {i.organization_id: i for i in Invoice.objects.all()}
    for org in (cast.buyer_a, cast.buyer_b):
        invoice = invoices[org.pk]
        # before rounding: the lines are exactly what rating charged
        assert invoice.subtotal_exact_micros == _usage_debits(org) > 0
        assert (
            sum(line.exact_micros for line in invoice.lines.all()) == invoice.subtotal_exact_micros
        )
        # every line traces to journal entries that add up to it
        for line in invoice.lines.all():
            assert sum(e.amount_micros for e in line.entries.all()) == line.exact_micros
            assert line.amount_micros % 10_000 == 0
        assert invoice.subtotal_micros == sum(line.amount_micros for line in invoice.lines.all())
        assert invoice.rounding_micros == invoice.subtotal_micros - invoice.subtotal_exact_micros
    # after rounding: tax and rounding accounts, and what is owed, agree to the cent
    assert platform("rounding") == sum(i.rounding_micros for i in invoices.values())
    assert platform("tax_payable") == sum(i.tax_micros for i in invoices.values()) > 0
    b = invoices[cast.buyer_b.pk]
    assert (
        b.tax_micros == Money(b.subtotal_micros * 19 // 100, "USD").round_to_minor().amount_micros
    )
    assert balance(cast.buyer_b, "receivable") == b.amount_due_micros > 0
    assert b.status == "open" and b.number.startswith("TDM-")
    a = invoices[cast.buyer_a.pk]
    assert balance(cast.buyer_a, "receivable") == a.amount_due_micros
    assert a.prepaid_applied_micros + a.amount_due_micros == a.total_micros
    # product grouping: fine-tune per job, inference per model, leases per GPU model
    products = {line.product for line in a.lines.all()}
    assert products == {"fine_tune", "inference", "gpu_lease"}
    jobs = {line.job for line in a.lines.filter(product="fine_tune")}
    assert jobs == {f"ft-{cast.buyer_a.pk}-{n}" for n in range(3)}


def test_close_is_idempotent_and_late_usage_goes_to_the_next_month(month):
    cast = month
    period_close(period=PERIOD, now=CLOSE_AT)
    before = {i.key: (i.number, i.document_sha256) for i in Invoice.objects.all()}
    entries = Event.objects.order_by("-position").first().position
    # late usage for October, after the close
    record(
        [
            event(
                cast.buyer_a,
                "tokens.prompt",
                5_000_000,
                START + timedelta(days=3),
                model="llama-3.1-8b",
            )
        ]
    )
    settle()
    late = UsageAccrual.objects.filter(buyer_id=cast.buyer_a.pk).order_by("-id").first()
    assert late.period.month == 11
    again = period_close(period=PERIOD, now=CLOSE_AT)
    assert again.already_final == 2 and again.finalized == 0
    assert {i.key: (i.number, i.document_sha256) for i in Invoice.objects.all()} == before
    assert Event.objects.filter(position__gt=entries, stream_type="billing.invoice").count() == 0
    november = invoice_draft_refresh(organization=cast.buyer_a, period=late.period)
    assert november.status == "draft" and november.subtotal_exact_micros == 500_000


def test_replaying_the_event_store_regenerates_byte_identical_invoices(month):
    cast = month
    period_close(period=PERIOD, now=CLOSE_AT)
    a = Invoice.objects.get(organization=cast.buyer_a)
    credit_note_issue(invoice=a, amount_micros=1_000_000, reason="goodwill", key="cn-1")
    b = Invoice.objects.get(organization=cast.buyer_b)
    invoice_mark_paid(invoice=b, payment_reference="pi_123")
    renders = {
        i.key: (invoice_json(i), invoice_html(i), invoice_pdf(i), i.status, i.credited_micros)
        for i in Invoice.objects.all()
    }
    links = sorted(
        InvoiceLineEntry.objects.values_list("entry_position", "transfer_id", "amount_micros")
    )
    assert invoices_rebuild() == 2
    again = {
        i.key: (invoice_json(i), invoice_html(i), invoice_pdf(i), i.status, i.credited_micros)
        for i in Invoice.objects.all()
    }
    assert again == renders
    assert (
        sorted(
            InvoiceLineEntry.objects.values_list("entry_position", "transfer_id", "amount_micros")
        )
        == links
    )


def test_the_pdf_opens_and_holds_the_totals(month):
    period_close(period=PERIOD, now=CLOSE_AT)
    invoice = Invoice.objects.get(organization=month.buyer_b)
    text = "".join(
        page.extract_text() for page in PdfReader(io.BytesIO(invoice_pdf(invoice))).pages
    )
    assert invoice.number in text
    assert Money(invoice.total_micros, "USD").format() in text
    assert Money(invoice.amount_due_micros, "USD").format() in text
    html = invoice_html(invoice).decode()
    assert invoice.number in html and Money(invoice.total_micros, "USD").format() in html


def test_finalized_invoices_do_not_change_and_a_credit_note_corrects(month):
    cast = month
    period_close(period=PERIOD, now=CLOSE_AT)
    invoice = Invoice.objects.get(organization=cast.buyer_b)
    frozen = (invoice.number, invoice.document_sha256, invoice.total_micros)
    # a refresh leaves it alone; so does a second finalization
    assert (
        invoice_draft_refresh(organization=cast.buyer_b, period=PERIOD).document_sha256 == frozen[1]
    )
    owed = outstanding(invoice)
    receivable = balance(cast.buyer_b, "receivable")
    revenue = platform("revenue")
    note = credit_note_issue(
        invoice=invoice, amount_micros=2_000_000, reason="a failed job", key="cn-b"
    )
    assert note.tax_micros == 380_000 and note.total_micros == 2_380_000
    assert note.number.startswith("TDM-CN-")
    invoice.refresh_from_db()
    assert (invoice.number, invoice.document_sha256, invoice.total_micros) == frozen
    assert outstanding(invoice) == owed - 2_380_000
    assert balance(cast.buyer_b, "receivable") == receivable - 2_380_000
    assert platform("revenue") == revenue - 2_000_000
    # the same key again is the same note; too much is refused
    assert (
        credit_note_issue(invoice=invoice, amount_micros=2_000_000, reason="x", key="cn-b").pk
        == note.pk
    )
    with pytest.raises(Exception, match="at most the invoice subtotal"):
        credit_note_issue(
            invoice=invoice, amount_micros=invoice.subtotal_micros, reason="x", key="cn-c"
        )
    # a paid invoice cannot be voided, only credited
    invoice_mark_paid(invoice=invoice, payment_reference="pi_9")
    assert balance(cast.buyer_b, "receivable") == receivable - owed
    with pytest.raises(Conflict):
        invoice_void(invoice=invoice, reason="mistake")


def test_voiding_an_open_invoice_reverses_everything_it_posted(month):
    cast = month
    credit_before = balance(cast.buyer_b, "credit")
    period_close(period=PERIOD, now=CLOSE_AT)
    invoice = Invoice.objects.get(organization=cast.buyer_b)
    invoice_void(invoice=invoice, reason="issued to the wrong entity")
    invoice.refresh_from_db()
    assert invoice.status == "void" and invoice.number
    assert balance(cast.buyer_b, "receivable") == 0
    assert balance(cast.buyer_b, "credit") == credit_before + invoice.prepaid_applied_micros
    other = Invoice.objects.exclude(pk=invoice.pk).get()
    assert platform("tax_payable") == other.tax_micros == 0
    assert platform("rounding") == other.rounding_micros


def test_a_price_change_mid_month_bills_each_side_at_its_own_price(cast):
    from pricing.schedule import price_schedule

    price_schedule(
        item="inference",
        tier="up-to-16b",
        variant="prompt",
        value=150_000,
        effective_from=START + timedelta(days=15),
        now=START,
        reason="new prompt price",
    )
    services.credits_grant(
        organization=cast.buyer_a,
        amount_micros=5_000_000,
        currency="USD",
        reason="t",
        transfer_id="t1",
    )
    record(
        [
            event(
                cast.buyer_a,
                "tokens.prompt",
                1_000_000,
                START + timedelta(days=14, hours=23),
                model="llama-3.1-8b",
            ),
            event(
                cast.buyer_a,
                "tokens.prompt",
                1_000_000,
                START + timedelta(days=15),
                model="llama-3.1-8b",
            ),
        ]
    )
    settle()
    invoice = invoice_draft_refresh(organization=cast.buyer_a, period=PERIOD)
    lines = sorted((line.unit_price_micros, line.exact_micros) for line in invoice.lines.all())
    assert lines == [(100_000, 100_000), (150_000, 150_000)]
    assert invoice.subtotal_exact_micros == 250_000 == _usage_debits(cast.buyer_a)


@pytest.mark.django_db(transaction=True)
def test_numbers_have_no_gaps_under_concurrent_finalization(cast):
    import threading

    from django.db import connection

    from core import services as core
    from invoicing.finalization import invoice_finalize

    buyers = [core.org_create(name=f"Concurrent {n}", kind="buyer") for n in range(6)]
    record(
        [
            event(
                org,
                "tokens.prompt",
                100_000 * (n + 1),
                START + timedelta(days=2),
                model="llama-3.1-8b",
            )
            for n, org in enumerate(buyers)
        ]
    )
    settle()
    drafts = [invoice_draft_refresh(organization=org, period=PERIOD) for org in buyers]
    barrier = threading.Barrier(len(drafts))
    errors = []

    def finalize(invoice):
        try:
            barrier.wait()
            invoice_finalize(invoice=invoice, now=CLOSE_AT)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=finalize, args=(d,)) for d in drafts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"TDM-{n:06d}" for n in range(1, 7)]
    by_number = defaultdict(int)
    for e in Event.objects.filter(type="InvoiceFinalized"):
        by_number[e.payload["number"]] += 1
    assert all(v == 1 for v in by_number.values()) and len(by_number) == 6


def test_lines_and_their_links_must_name_rows_that_exist(month):
    from django.db import IntegrityError, connection, transaction

    from invoicing.models import InvoiceLine

    # given a closed month (its lines and links checked per statement, not per row)
    period_close(period=PERIOD, now=CLOSE_AT)
    line = InvoiceLine.objects.order_by("pk").first()
    link = InvoiceLineEntry.objects.filter(line=line).first()
    assert line is not None and link is not None
    missing = Invoice.objects.order_by("-pk").first().pk + 1000
    with connection.cursor() as cursor:
        # then a line naming no invoice, or a link naming no line, is refused
        for statement, params in (
            ("UPDATE billing_invoiceline SET invoice_id = %s WHERE id = %s", [missing, line.pk]),
            (
                "INSERT INTO billing_invoicelineentry "
                "(line_id, entry_position, transfer_id, amount_micros) VALUES (%s, 1, 'x', 1)",
                [line.pk + 10**6],
            ),
        ):
            with pytest.raises(IntegrityError, match="does not exist"), transaction.atomic():
                cursor.execute(statement, params)
        # and so is deleting an invoice whose lines are left behind
        with pytest.raises(IntegrityError, match="still name"), transaction.atomic():
            cursor.execute("DELETE FROM billing_invoice WHERE id = %s", [line.invoice_id])
    # while the ORM's delete of lines (as a draft's refresh does) takes their links along
    InvoiceLine.objects.filter(invoice_id=line.invoice_id).delete()
    assert not InvoiceLineEntry.objects.filter(line_id=line.pk).exists()
