"""Closing a month the way ``manage.py close_period`` and bench/close.py do, outside
any transaction: in chunks, finalized by two processes at once, each on its own
connection, the statements written meanwhile. The invoices must be what a fresh
computation gives, replayable byte for byte, numbered without a gap whatever else
takes numbers meanwhile, and a close that fails half way is finished by running it
again."""

from __future__ import annotations

import gc
import multiprocessing
import os

import pytest
from django.db import connection, connections

from invoicing import month_close
from invoicing.models import BillingProfile, DocumentSequence, Invoice, ProviderStatement
from invoicing.month_close import period_close
from invoicing.replay import invoices_rebuild
from ledger.models import Account
from tests.invoicing.test_invoicing import _usage_debits
from tests.invoicing.world import (
    CLOSE_AT,
    PERIOD,
    grant,
    platform,
    taxed_month,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def month(cast):
    """Two buyers' month, closed one org per chunk: two chunks, two processes."""
    return taxed_month(cast, events_per_buyer=200)


def _numbers() -> list[int]:
    numbers = Invoice.objects.values_list("number", flat=True)
    return sorted(int(number.rsplit("-", 1)[1]) for number in numbers)


def _exactly_what_rating_charged(cast) -> None:
    invoices = {i.organization_id: i for i in Invoice.objects.order_by("number")}
    for org in (cast.buyer_a, cast.buyer_b):
        assert invoices[org.pk].subtotal_exact_micros == _usage_debits(org) > 0
        assert invoices[org.pk].status != "draft"
    assert platform("rounding") == sum(i.rounding_micros for i in invoices.values())


def test_chunks_finalized_in_two_processes_close_the_month_exactly(month, monkeypatch, tmp_path):
    # given one org per chunk, and a record of which process computes each chunk
    monkeypatch.setattr(month_close, "CLOSE_CHUNK", 1)
    compute_ahead = month_close._compute_ahead

    def spy(*args):
        (tmp_path / f"{args[0][0]}").write_text(str(os.getpid()))
        return compute_ahead(*args)

    monkeypatch.setattr(month_close, "_compute_ahead", spy)

    # when
    result = period_close(period=PERIOD, now=CLOSE_AT)

    # then each chunk was computed and written by a process of its own
    pids = {path.read_text() for path in tmp_path.iterdir()}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    assert result.finalized == 2 and result.statements == ProviderStatement.objects.count()
    # the invoices are exactly what rating charged, numbered in the orgs' order without
    # a gap, and the rounding account holds their rounding
    _exactly_what_rating_charged(month)
    by_org = Invoice.objects.order_by("organization_id").values_list("number", flat=True)
    assert [int(n.rsplit("-", 1)[1]) for n in by_org] == [1, 2]
    assert DocumentSequence.objects.get(series="INV").last_number == 2
    # a fresh computation as of each invoice's position gives its hash again
    assert invoices_rebuild() == 2
    # and a second close changes nothing
    again = period_close(period=PERIOD, now=CLOSE_AT)
    assert again.finalized == 0 and again.already_final == 2


def test_a_close_pauses_the_garbage_collector_and_gives_it_back_as_it_found_it(month, monkeypatch):
    # given a record of the collector's state in each process computing a chunk
    monkeypatch.setattr(month_close, "CLOSE_CHUNK", 1)
    compute_ahead = month_close._compute_ahead
    seen = multiprocessing.get_context("fork").SimpleQueue()

    def spy(*args):
        seen.put(gc.isenabled())
        return compute_ahead(*args)

    monkeypatch.setattr(month_close, "_compute_ahead", spy)
    assert gc.isenabled()

    # when
    result = period_close(period=PERIOD, now=CLOSE_AT)

    # then its processes ran without automatic collections, and this one has them back
    assert result.finalized == 2
    assert [seen.get(), seen.get()] == [False, False]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    # a caller that had paused them finds them paused still
    gc.disable()
    try:
        period_close(period=PERIOD, now=CLOSE_AT)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_processes_of_a_close_plan_their_reads_as_lookups(month, monkeypatch):
    # given a record of each chunk's process's planner settings
    monkeypatch.setattr(month_close, "CLOSE_CHUNK", 1)
    compute_ahead = month_close._compute_ahead
    seen = multiprocessing.get_context("fork").SimpleQueue()

    def spy(*args):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('random_page_cost'), "
                "current_setting('max_parallel_workers_per_gather')"
            )
            seen.put(cursor.fetchone())
        return compute_ahead(*args)

    monkeypatch.setattr(month_close, "_compute_ahead", spy)

    # when
    period_close(period=PERIOD, now=CLOSE_AT)

    # then both used the close's settings, and this process's connection keeps its own
    assert [seen.get(), seen.get()] == [("1.1", "0"), ("1.1", "0")]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('random_page_cost')")
        assert cursor.fetchone() == ("4",)


def test_a_number_taken_elsewhere_during_the_close_leaves_no_gap(month, monkeypatch, caplog):
    # given a finalization elsewhere that takes the next number just before the first
    # chunk confirms the numbers it predicted
    monkeypatch.setattr(month_close, "CLOSE_CHUNK", 1)
    confirm = month_close._numbers_confirm

    def taken_meanwhile(series, first, count):
        if first == 1:
            elsewhere = connections.create_connection("default")
            try:
                with elsewhere.cursor() as cursor:
                    cursor.execute(
                        "INSERT INTO billing_documentsequence (issuer, series, last_number) "
                        "VALUES ('TDM', 'INV', 1) ON CONFLICT (issuer, series) "
                        "DO UPDATE SET last_number = billing_documentsequence.last_number + 1"
                    )
            finally:
                elsewhere.close()
        return confirm(series, first, count)

    monkeypatch.setattr(month_close, "_numbers_confirm", taken_meanwhile)

    # when
    result = period_close(period=PERIOD, now=CLOSE_AT)

    # then the close finished (in one process) with the numbers after the one taken
    assert "numbers taken meanwhile" in caplog.text
    assert result.finalized == 2 and result.already_final == 0
    assert _numbers() == [2, 3]
    assert DocumentSequence.objects.get(series="INV").last_number == 3
    _exactly_what_rating_charged(month)
    assert invoices_rebuild() == 2


def test_a_close_that_fails_in_a_process_is_finished_by_running_it_again(month, monkeypatch):
    # given a close whose second chunk fails
    monkeypatch.setattr(month_close, "CLOSE_CHUNK", 1)
    compute_ahead = month_close._compute_ahead

    def failing(org_ids, *args):
        if org_ids == [month.buyer_b.pk]:
            raise ValueError("the second chunk fails")
        return compute_ahead(org_ids, *args)

    monkeypatch.setattr(month_close, "_compute_ahead", failing)

    # when it runs, it fails, saying why
    with pytest.raises(RuntimeError, match="the second chunk fails"):
        period_close(period=PERIOD, now=CLOSE_AT)

    # then what was committed is whole (the first chunk at most), and running it again
    # finishes the month without a gap
    assert Invoice.objects.exclude(status="draft").count() <= 1
    monkeypatch.setattr(month_close, "_compute_ahead", compute_ahead)
    result = period_close(period=PERIOD, now=CLOSE_AT)
    assert result.finalized + result.already_final == 2
    assert _numbers() == [1, 2]
    _exactly_what_rating_charged(month)
    assert invoices_rebuild() == 2


def test_a_buyer_whose_credit_pays_its_invoice_gets_no_receivable(cast):
    # given a month in which Buyer A's prepaid credit covers everything it used, and
    # the tax and rounding its invoice adds
    BillingProfile.objects.create(organization=cast.buyer_a, tax_rate_bps=1900)
    grant(cast.buyer_a, 100_000_000_000, "top-up:ample")
    taxed_month(cast, events_per_buyer=50)
    assert not Account.objects.filter(organization=cast.buyer_a, kind="receivable").exists()

    # when the month closes
    period_close(period=PERIOD, now=CLOSE_AT)

    # then its invoice is paid from the credit, and no receivable was opened for it
    # (the entry posted nothing to one)
    invoice = Invoice.objects.get(organization=cast.buyer_a)
    assert invoice.tax_micros > 0 and invoice.amount_due_micros == 0
    assert invoice.status == "paid" and invoice.prepaid_applied_micros == invoice.total_micros
    assert not Account.objects.filter(organization=cast.buyer_a, kind="receivable").exists()
    # while Buyer B, who owes, has one
    assert Account.objects.filter(organization=cast.buyer_b, kind="receivable").exists()
