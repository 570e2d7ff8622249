"""Closing a month the way ``manage.py close_period`` and bench/close.py do, outside
any transaction: in chunks, each chunk's invoices computed on a second connection
while the chunk before is written, the statements while the last one is. The
invoices must be what a fresh computation gives, replayable byte for byte."""

from __future__ import annotations

import threading

import pytest

from billing import invoicing
from billing.invoicing import invoices_rebuild, period_close
from billing.models import BillingProfile, Invoice, ProviderStatement
from billing.pricing import price_book_forget
from tests.billing.invoicing_world import CLOSE_AT, PERIOD, generate_month, platform, record, settle
from tests.billing.test_invoicing import _usage_debits

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_price_book():
    price_book_forget()
    yield
    price_book_forget()


def test_chunks_computed_ahead_on_a_second_connection_close_the_month_exactly(cast, monkeypatch):
    # given a month of two buyers, closed one org per chunk (the second chunk is
    # computed on the second connection while the first is written)
    BillingProfile.objects.create(
        organization=cast.buyer_b, tax_rate_bps=1900, legal_name="Buyer B GmbH"
    )
    record(generate_month(cast, events_per_buyer=200))
    settle()
    monkeypatch.setattr(invoicing, "CLOSE_CHUNK", 1)
    threads = []
    compute_ahead = invoicing._compute_ahead

    def spy(*args):
        threads.append(threading.current_thread().name)
        return compute_ahead(*args)

    monkeypatch.setattr(invoicing, "_compute_ahead", spy)

    # when
    result = period_close(period=PERIOD, now=CLOSE_AT)

    # then both were computed ahead, away from this thread
    assert result.finalized == 2 and result.statements == ProviderStatement.objects.count()
    assert len(threads) == 2 and all(name.startswith("close") for name in threads)
    # the invoices are exactly what rating charged, numbered without a gap, and
    # the rounding account holds their rounding
    invoices = {i.organization_id: i for i in Invoice.objects.order_by("number")}
    for org in (cast.buyer_a, cast.buyer_b):
        assert invoices[org.pk].subtotal_exact_micros == _usage_debits(org) > 0
        assert invoices[org.pk].status != "draft"
    assert [int(i.number.rsplit("-", 1)[1]) for i in invoices.values()] == [1, 2]
    assert platform("rounding") == sum(i.rounding_micros for i in invoices.values())
    # a fresh computation as of each invoice's position gives its hash again
    assert invoices_rebuild() == 2
    # and a second close changes nothing
    again = period_close(period=PERIOD, now=CLOSE_AT)
    assert again.finalized == 0 and again.already_final == 2
