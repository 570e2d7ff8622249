"""Operators' ledger commands: grant_credits, rebuild_balances, sweep_holds."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from core.models import Event
from ledger import selectors, services
from ledger.engine import HoldRequest, ledger_execute
from ledger.models import Account, Balance, Hold, Posting

pytestmark = pytest.mark.django_db

USD = 1_000_000


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def available(org, currency: str = "USD") -> int:
    account = selectors.account_for_org(
        organization=org, kind=Account.Kind.CREDIT, currency=currency
    )
    return account.available_micros


# --- grant_credits ----------------------------------------------------------


def test_grant_credits_posts_an_entry_from_promo_and_prints_the_balance(cast):
    output = run(
        "grant_credits", "--org", "Buyer A", "--amount", "25.00", "--reason", "welcome credit"
    )

    assert "Granted 25.00 USD to Buyer A" in output
    assert "Available balance of Buyer A: 25.00 USD" in output
    assert available(cast.buyer_a) == 25 * USD
    event = Event.objects.get(type="EntryPosted")
    assert (event.payload["kind"], event.payload["description"]) == ("grant", "welcome credit")
    assert event.metadata["actor"] == "cli:grant_credits"
    promo = services.platform_account(kind=Account.Kind.PROMO, currency="USD")
    lines = sorted(
        Posting.objects.filter(entry=event).values_list("account_id", "side", "amount_micros")
    )
    credit = selectors.account_for_org(organization=cast.buyer_a, kind="credit", currency="USD")
    assert lines == sorted([(promo.pk, "D", 25 * USD), (credit.pk, "C", 25 * USD)])


def test_grants_add_up_and_print_the_new_available_balance(cast):
    run("grant_credits", "--org", "Buyer A", "--amount", "25", "--reason", "one")

    output = run("grant_credits", "--org", "Buyer A", "--amount", "0.000125", "--reason", "two")

    assert "Granted 0.000125 USD" in output
    assert "Available balance of Buyer A: 25.000125 USD" in output
    assert available(cast.buyer_a) == 25 * USD + 125


def test_grant_credits_in_another_currency(cast):
    output = run(
        "grant_credits",
        "--org",
        "Buyer B",
        "--amount",
        "7.50",
        "--reason",
        "eu",
        "--currency",
        "EUR",
    )

    assert "Available balance of Buyer B: 7.50 EUR" in output
    assert available(cast.buyer_b, "EUR") == 7_500_000
    assert (
        selectors.account_for_org(organization=cast.buyer_b, kind="credit", currency="USD") is None
    )


def test_grant_credits_with_an_id_runs_once(cast):
    run("grant_credits", "--org", "Buyer A", "--amount", "10", "--reason", "r", "--id", "g-1")

    output = run(
        "grant_credits", "--org", "Buyer A", "--amount", "10", "--reason", "r", "--id", "g-1"
    )

    assert "Already granted" in output
    assert "Available balance of Buyer A: 10.00 USD" in output
    assert available(cast.buyer_a) == 10 * USD
    assert Posting.objects.count() == 2


def test_grant_credits_refuses_an_id_reused_for_another_amount(cast):
    run("grant_credits", "--org", "Buyer A", "--amount", "10", "--reason", "r", "--id", "g-1")

    with pytest.raises(CommandError, match="different body"):
        run("grant_credits", "--org", "Buyer A", "--amount", "11", "--reason", "r", "--id", "g-1")

    assert available(cast.buyer_a) == 10 * USD


@pytest.mark.parametrize("amount", ["abc", "-5", "0", "0.0000001", "1e30", "NaN", "", "1,5"])
def test_grant_credits_refuses_a_bad_amount(cast, amount):
    with pytest.raises(CommandError) as caught:
        run("grant_credits", "--org", "Buyer A", "--amount", amount, "--reason", "r")

    assert str(caught.value).startswith("--amount must be a positive decimal with at most 6 places")
    assert not Posting.objects.exists()


def test_grant_credits_refuses_an_unknown_org(cast):
    with pytest.raises(CommandError, match="no organization named 'Nobody'"):
        run("grant_credits", "--org", "Nobody", "--amount", "5", "--reason", "r")

    assert not Posting.objects.exists()


def test_grant_credits_refuses_a_provider(cast):
    with pytest.raises(CommandError, match="credits go to buyers"):
        run("grant_credits", "--org", "Provider A", "--amount", "5", "--reason", "r")

    assert not Account.objects.filter(organization=cast.provider_a).exists()
    assert not Posting.objects.exists()


def test_grant_credits_refuses_an_unknown_currency(cast):
    with pytest.raises(CommandError, match="invalid choice"):
        run(
            "grant_credits",
            "--org",
            "Buyer A",
            "--amount",
            "5",
            "--reason",
            "r",
            "--currency",
            "XYZ",
        )


def test_grant_credits_needs_a_reason(cast):
    with pytest.raises(CommandError, match="needs a reason"):
        run("grant_credits", "--org", "Buyer A", "--amount", "5", "--reason", "   ")

    assert not Posting.objects.exists()


# --- rebuild_balances -------------------------------------------------------


def test_rebuild_balances_finds_nothing_to_fix_on_healthy_books(cast):
    run("grant_credits", "--org", "Buyer A", "--amount", "5", "--reason", "r")

    assert "0 rows differed" in run("rebuild_balances")


def test_rebuild_balances_repairs_a_drifted_projection(cast):
    run("grant_credits", "--org", "Buyer A", "--amount", "5", "--reason", "r")
    account = selectors.account_for_org(organization=cast.buyer_a, kind="credit", currency="USD")
    Balance.objects.filter(account=account).update(credits_posted=999)

    output = run("rebuild_balances")

    assert "1 row(s) differed" in output
    assert available(cast.buyer_a) == 5 * USD


# --- sweep_holds ------------------------------------------------------------


def test_sweep_holds_releases_expired_holds_only(cast):
    services.credits_grant(
        organization=cast.buyer_a,
        amount_micros=10 * USD,
        currency="USD",
        reason="r",
        transfer_id="seed",
    )
    buyer = selectors.account_for_org(organization=cast.buyer_a, kind="credit", currency="USD")
    revenue = services.platform_account(kind=Account.Kind.REVENUE, currency="USD")
    an_hour_ago = timezone.now() - timedelta(hours=1)
    [stale, live] = ledger_execute(
        [
            HoldRequest(
                hold_id="stale",
                debit_account_id=buyer.pk,
                credit_account_id=revenue.pk,
                amount_micros=3 * USD,
                currency="USD",
                expires_at=an_hour_ago + timedelta(minutes=1),
            ),
            HoldRequest(
                hold_id="live",
                debit_account_id=buyer.pk,
                credit_account_id=revenue.pk,
                amount_micros=2 * USD,
                currency="USD",
                expires_at=an_hour_ago + timedelta(hours=2),
            ),
        ],
        now=an_hour_ago,
    )
    assert stale.ok and live.ok
    assert available(cast.buyer_a) == 5 * USD

    output = run("sweep_holds")

    assert "Released 1 expired hold(s)." in output
    assert dict(Hold.objects.values_list("hold_id", "state")) == {
        "stale": "expired",
        "live": "pending",
    }
    assert available(cast.buyer_a) == 8 * USD
    assert "Released 0 expired hold(s)." in run("sweep_holds")


def test_sweep_holds_works_through_batches(cast):
    services.credits_grant(
        organization=cast.buyer_a,
        amount_micros=10 * USD,
        currency="USD",
        reason="r",
        transfer_id="seed",
    )
    buyer = selectors.account_for_org(organization=cast.buyer_a, kind="credit", currency="USD")
    revenue = services.platform_account(kind=Account.Kind.REVENUE, currency="USD")
    an_hour_ago = timezone.now() - timedelta(hours=1)
    ledger_execute(
        [
            HoldRequest(
                hold_id=f"h{i}",
                debit_account_id=buyer.pk,
                credit_account_id=revenue.pk,
                amount_micros=USD,
                currency="USD",
                expires_at=an_hour_ago + timedelta(minutes=1),
            )
            for i in range(5)
        ],
        now=an_hour_ago,
    )

    output = run("sweep_holds", "--batch-size", "2")

    assert "Released 5 expired hold(s)." in output
    assert not Hold.objects.filter(state="pending").exists()
    assert available(cast.buyer_a) == 10 * USD
