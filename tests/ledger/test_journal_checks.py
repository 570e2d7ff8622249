"""The journal's statement-level check in the database (billing 0002, reading the
events by a range of positions since ledger 0003): postings written directly,
around the ledger's code, are refused unless every entry balances, is an event,
and posts to accounts of its currency; a batch's gaps and mixes are checked too."""

from __future__ import annotations

import contextlib

import pytest
from django.db import DatabaseError, connection, transaction

from core.models import Event
from ledger.models import Account, Posting

pytestmark = pytest.mark.django_db

INSERT = (
    "INSERT INTO billing_posting (entry_position, account_id, currency, side, amount_micros, "
    "recorded_at) VALUES "
)


def post(rows: list[tuple[int, int, str, str, int]]) -> None:
    """One INSERT statement of ``(entry, account, currency, side, amount)`` rows."""
    with connection.cursor() as cursor:
        cursor.execute(
            INSERT + ", ".join(["(%s, %s, %s, %s, %s, now())"] * len(rows)),
            [value for row in rows for value in row],
        )


class _Undone(Exception):
    pass


@pytest.fixture
def entries(make_buyer) -> list[int]:
    """Positions of a few real events, with a position between them that is no
    event (drawn by a transaction that rolled back)."""
    make_buyer("checks-a", 1_000_000)
    with contextlib.suppress(_Undone), transaction.atomic():
        make_buyer("checks-undone", 1_000_000)
        raise _Undone
    make_buyer("checks-b", 1_000_000)
    positions = list(Event.objects.order_by("position").values_list("position", flat=True))
    assert positions[-1] - positions[0] + 1 > len(positions)  # a gap
    return positions


def test_entries_with_a_gap_between_them_in_one_statement_are_accepted(
    make_buyer, revenue, entries
):
    buyer = make_buyer("apart")
    first, last = entries[0], entries[-1]
    post(
        [
            (first, buyer.pk, "USD", "D", 5),
            (first, revenue.pk, "USD", "C", 5),
            (last, buyer.pk, "USD", "D", 7),
            (last, revenue.pk, "USD", "C", 7),
        ]
    )
    assert Posting.objects.filter(amount_micros__in=[5, 7]).count() == 4


def test_an_entry_that_is_no_event_is_found_among_real_ones(make_buyer, revenue, entries):
    buyer = make_buyer("gap")
    first, last = entries[0], entries[-1]
    with pytest.raises(DatabaseError, match=f"{last + 50} is not an event"), transaction.atomic():
        post(
            [
                (first, buyer.pk, "USD", "D", 5),
                (first, revenue.pk, "USD", "C", 5),
                (last + 50, buyer.pk, "USD", "D", 7),
                (last + 50, revenue.pk, "USD", "C", 7),
            ]
        )


def test_one_unbalanced_entry_among_many_refuses_the_statement(make_buyer, revenue, entries):
    buyer = make_buyer("many")
    rows = []
    for position in entries:
        rows += [(position, buyer.pk, "USD", "D", 3), (position, revenue.pk, "USD", "C", 3)]
    rows[-1] = (entries[-1], revenue.pk, "USD", "C", 2)
    with (
        pytest.raises(DatabaseError, match=f"{entries[-1]} does not balance"),
        transaction.atomic(),
    ):
        post(rows)


def test_a_posting_in_another_currency_than_its_account_is_refused(make_buyer, entries):
    buyer = make_buyer("usd")
    euros = Account.objects.create(kind=Account.Kind.REVENUE, currency="EUR", normal_side="C")
    with (
        pytest.raises(DatabaseError, match="posts to an account of another currency"),
        transaction.atomic(),
    ):
        post([(entries[0], buyer.pk, "USD", "D", 5), (entries[0], euros.pk, "USD", "C", 5)])


def test_an_entry_of_one_posting_is_refused(make_buyer, entries):
    buyer = make_buyer("lone")
    with pytest.raises(DatabaseError, match="does not balance"), transaction.atomic():
        post([(entries[0], buyer.pk, "USD", "D", 5)])
