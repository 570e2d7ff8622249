"""The trial balance by kind (the finance page's): the organizations' accounts of a
kind summed into one row, the platform's accounts as they are, and the same totals
as the account-by-account trial balance."""

from __future__ import annotations

from collections import defaultdict

import pytest

from core.services import org_create
from ledger import selectors
from ledger.models import Account
from tests.ledger.test_apis import USD, credit_account, grant, hold, platform

pytestmark = pytest.mark.django_db


def test_organizations_accounts_are_summed_by_kind_and_the_totals_agree(cast):
    # given: three buyers' credit in USD, one in EUR, and a pending hold
    grant(cast.buyer_a, 25 * USD, transfer_id="a")
    grant(cast.buyer_b, 10 * USD, transfer_id="b")
    grant(org_create(name="Buyer C", kind="buyer"), 3 * USD, transfer_id="c")
    grant(cast.buyer_a, 7 * USD, transfer_id="a-eur", currency="EUR")
    hold(credit_account(cast.buyer_b), platform(Account.Kind.REVENUE), 4 * USD, "h1")

    # when
    summary = selectors.trial_balance_by_kind()
    detail = selectors.trial_balance()

    # then: one row per currency, kind and owner, summing the accounts behind it
    rows = {(g.currency, g.kind, g.platform): g for g in summary.groups}
    credit = rows[("USD", "credit", False)]
    assert (credit.accounts, credit.credits_micros, credit.debits_micros) == (3, 38 * USD, 0)
    assert credit.balance_micros == 38 * USD
    assert rows[("EUR", "credit", False)].balance_micros == 7 * USD
    assert rows[("USD", "promo", True)].balance_micros == 38 * USD  # a debit-normal account
    # pending holds are not in the books
    assert rows[("USD", "revenue", True)].credits_micros == 0
    # the same books, summed the other way
    expected: dict[tuple[str, str, bool], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in detail.rows:
        key = (row.currency, row.kind, row.organization_id is None)
        expected[key][0] += 1
        expected[key][1] += row.debits_micros
        expected[key][2] += row.credits_micros
    assert {k: [g.accounts, g.debits_micros, g.credits_micros] for k, g in rows.items()} == dict(
        expected
    )
    assert summary.totals == detail.totals
    assert all(total.balanced for total in summary.totals)
    assert summary.position == detail.position


def test_one_currency_only(cast):
    grant(cast.buyer_a, 25 * USD, transfer_id="a")
    grant(cast.buyer_a, 7 * USD, transfer_id="a-eur", currency="EUR")

    summary = selectors.trial_balance_by_kind(currency="EUR")

    assert {g.currency for g in summary.groups} == {"EUR"}
    assert [t.currency for t in summary.totals] == ["EUR"]
