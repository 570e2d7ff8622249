"""The ledger's rules, one at a time (single connection)."""

from __future__ import annotations

import gc
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from core.errors import (
    Conflict,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
)
from core.models import Event
from ledger import engine, services
from ledger.engine import EntryRequest, HoldPostRequest, HoldVoidRequest, ledger_execute
from ledger.models import Account, Balance, Hold, Posting
from ledger.projection import replay

pytestmark = pytest.mark.django_db


def balance(account: Account) -> Balance:
    return Balance.objects.get(account=account)


def available(account: Account) -> int:
    b = balance(account)
    return b.credits_posted - b.debits_posted - b.debits_pending


def live_counters() -> dict[int, tuple]:
    return {
        b.account_id: (
            b.debits_posted,
            b.credits_posted,
            b.debits_pending,
            b.credits_pending,
            b.position,
        )
        for b in Balance.objects.all()
        if (b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending) != (0,) * 4
    }


def test_grant_is_a_balanced_entry_from_promo(make_buyer):
    buyer = make_buyer("acme", 25_000_000)
    promo = services.platform_account(kind=Account.Kind.PROMO, currency="USD")
    assert available(buyer) == 25_000_000
    assert balance(promo).debits_posted == 25_000_000
    entry = Event.objects.get(stream_id="entry:seed:acme")
    assert entry.payload["kind"] == "grant"
    assert entry.payload["description"] == "test credits"
    postings = Posting.objects.filter(entry=entry)
    assert sorted((p.side, p.amount_micros) for p in postings) == [
        ("C", 25_000_000),
        ("D", 25_000_000),
    ]


def test_transfer_is_refused_when_it_would_overdraw_prepaid_credit(make_buyer, revenue):
    buyer = make_buyer("thin", 1_000_000)
    with pytest.raises(InsufficientFunds) as caught:
        services.transfer_create(
            transfer_id="t-over",
            debit_account_id=buyer.pk,
            credit_account_id=revenue.pk,
            amount_micros=1_000_001,
            currency="USD",
        )
    assert caught.value.details["missing_micros"] == 1
    assert available(buyer) == 1_000_000
    assert not Event.objects.filter(stream_id="entry:t-over").exists()


def test_credit_limit_lets_a_postpaid_org_go_below_zero(make_buyer, revenue):
    buyer = make_buyer("postpaid")
    services.account_set_overdraft_limit(account=buyer, limit_micros=5_000_000)
    services.transfer_create(
        transfer_id="t-pp",
        debit_account_id=buyer.pk,
        credit_account_id=revenue.pk,
        amount_micros=5_000_000,
        currency="USD",
    )
    assert available(buyer) == -5_000_000
    with pytest.raises(InsufficientFunds):
        services.transfer_create(
            transfer_id="t-pp2",
            debit_account_id=buyer.pk,
            credit_account_id=revenue.pk,
            amount_micros=1,
            currency="USD",
        )


def test_same_transfer_id_replays_and_a_different_body_is_refused(make_buyer, revenue):
    buyer = make_buyer("idem", 10_000_000)
    args = dict(
        transfer_id="t-1", debit_account_id=buyer.pk, credit_account_id=revenue.pk, currency="USD"
    )
    first = services.transfer_create(amount_micros=2_000_000, **args)
    again = services.transfer_create(amount_micros=2_000_000, **args)
    assert first.status == "posted" and again.status == "replayed"
    assert again.position == first.position
    with pytest.raises(IdempotencyConflict):
        services.transfer_create(amount_micros=2_000_001, **args)
    assert available(buyer) == 8_000_000


def test_hold_reserves_then_posts_part_and_releases_the_rest(make_buyer, revenue):
    buyer = make_buyer("holder", 10_000_000)
    services.hold_create(
        hold_id="h-1",
        debit_account_id=buyer.pk,
        credit_account_id=revenue.pk,
        amount_micros=6_000_000,
        currency="USD",
        timeout=timedelta(hours=1),
    )
    assert available(buyer) == 4_000_000
    with pytest.raises(InsufficientFunds):
        services.transfer_create(
            transfer_id="t-during-hold",
            debit_account_id=buyer.pk,
            credit_account_id=revenue.pk,
            amount_micros=4_000_001,
            currency="USD",
        )
    services.hold_post(hold_id="h-1", amount_micros=2_500_000)
    assert available(buyer) == 7_500_000
    assert balance(revenue).credits_posted == 2_500_000
    hold = Hold.objects.get(hold_id="h-1")
    assert (hold.state, hold.posted_micros) == ("posted", 2_500_000)


def test_a_hold_resolves_exactly_once(make_buyer, revenue):
    buyer = make_buyer("once", 10_000_000)
    services.hold_create(
        hold_id="h-once",
        debit_account_id=buyer.pk,
        credit_account_id=revenue.pk,
        amount_micros=1_000_000,
        currency="USD",
        timeout=timedelta(hours=1),
    )
    services.hold_void(hold_id="h-once")
    assert services.hold_void(hold_id="h-once").status == "replayed"
    with pytest.raises(Conflict):
        services.hold_post(hold_id="h-once")
    assert available(buyer) == 10_000_000
    assert Event.objects.filter(stream_id="hold:h-once").count() == 2


def test_posting_more_than_held_is_refused(make_buyer, revenue):
    buyer = make_buyer("more", 10_000_000)
    services.hold_create(
        hold_id="h-more",
        debit_account_id=buyer.pk,
        credit_account_id=revenue.pk,
        amount_micros=1_000_000,
        currency="USD",
        timeout=timedelta(hours=1),
    )
    with pytest.raises(InvalidInput):
        services.hold_post(hold_id="h-more", amount_micros=1_000_001)
    with pytest.raises(NotFound):
        services.hold_post(hold_id="h-missing")


def test_expired_holds_are_released_by_the_sweep_and_cannot_be_posted(make_buyer, revenue):
    buyer = make_buyer("expiry", 10_000_000)
    services.hold_create(
        hold_id="h-exp",
        debit_account_id=buyer.pk,
        credit_account_id=revenue.pk,
        amount_micros=3_000_000,
        currency="USD",
        timeout=timedelta(seconds=30),
    )
    later = timezone.now() + timedelta(minutes=1)
    [result] = ledger_execute([HoldPostRequest("h-exp")], now=later)
    assert result.code == "hold_expired"
    assert services.holds_expire(now=later) == 1
    assert services.holds_expire(now=later) == 0
    assert Hold.objects.get(hold_id="h-exp").state == "expired"
    assert available(buyer) == 10_000_000
    [void] = ledger_execute([HoldVoidRequest("h-exp")], now=later)
    assert void.code == "hold_resolved"


def test_batch_rejects_bad_commands_alone(make_buyer, revenue):
    buyer = make_buyer("batch", 3_000_000)
    other = make_buyer("other-ccy")
    results = ledger_execute(
        [
            EntryRequest("b-1", "USD", ((buyer.pk, "D", 2_000_000), (revenue.pk, "C", 2_000_000))),
            EntryRequest("b-2", "USD", ((buyer.pk, "D", 2_000_000), (revenue.pk, "C", 2_000_000))),
            EntryRequest("b-3", "USD", ((buyer.pk, "D", 1), (revenue.pk, "C", 2))),
            EntryRequest("b-4", "USD", ((buyer.pk, "D", 1), (999_999, "C", 1))),
            EntryRequest("b-5", "XXX", ((buyer.pk, "D", 1), (other.pk, "C", 1))),
            EntryRequest("b-1", "USD", ((buyer.pk, "D", 2_000_000), (revenue.pk, "C", 2_000_000))),
        ]
    )
    assert [r.status for r in results] == [
        "posted",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "replayed",
    ]
    assert [r.code for r in results][1:5] == [
        "exceeds_limit",
        "invalid",
        "account_not_found",
        "invalid",
    ]
    assert results[5].position == results[0].position
    assert available(buyer) == 1_000_000


def test_a_transfer_past_a_limit_mid_batch_is_refused_alone_with_what_is_missing(
    make_buyer, revenue
):
    buyer = make_buyer("mid", 3_000_000)
    payee = make_buyer("payee")
    batch = [
        EntryRequest(f"mid-{n}", "USD", ((buyer.pk, "D", 1_000_000), (payee.pk, "C", 1_000_000)))
        for n in range(2)
    ]
    batch.append(
        EntryRequest("mid-over", "USD", ((buyer.pk, "D", 1_500_000), (payee.pk, "C", 1_500_000)))
    )
    batch.append(EntryRequest("mid-fits", "USD", ((buyer.pk, "D", 1), (revenue.pk, "C", 1))))
    results = ledger_execute(batch)
    assert [r.status for r in results] == ["posted", "posted", "rejected", "posted"]
    refused = results[2]
    assert refused.code == "exceeds_limit"
    assert refused.message == (
        f"account {buyer.pk} has 1000000 micro-units available; this needs 1500000 (500000 missing)"
    )
    assert refused.details == {
        "account": buyer.pk,
        "available_micros": 1_000_000,
        "missing_micros": 500_000,
    }
    assert not Event.objects.filter(stream_id="entry:mid-over").exists()
    assert available(buyer) == 999_999
    assert available(payee) == 2_000_000
    assert [r.position for r in results if r.ok] == sorted(r.position for r in results if r.ok)
    replayed = {a: s.counters() for a, s in replay().items() if s.counters()[:4] != (0,) * 4}
    assert replayed == live_counters()


def test_a_transfer_id_twice_in_one_batch_replays_with_legs_as_lists_and_refuses_a_new_body(
    make_buyer, revenue
):
    buyer = make_buyer("twice", 5_000_000)
    legs = ((buyer.pk, "D", 1_000), (revenue.pk, "C", 1_000))
    results = ledger_execute(
        [
            EntryRequest("twice-1", "USD", legs),
            EntryRequest("twice-1", "USD", tuple(list(leg) for leg in legs)),  # type: ignore[misc]
            EntryRequest("twice-1", "USD", ((buyer.pk, "D", 999), (revenue.pk, "C", 999))),
        ]
    )
    assert [r.status for r in results] == ["posted", "replayed", "rejected"]
    assert results[1].position == results[0].position
    assert results[2].code == "id_reused"
    stored = Event.objects.get(stream_id="entry:twice-1").payload
    assert stored["legs"] == [list(leg) for leg in legs]
    assert available(buyer) == 4_999_000


def test_a_batch_of_new_transfer_ids_runs_once_without_looking_them_up(
    make_buyer, revenue, monkeypatch
):
    buyer = make_buyer("fresh", 5_000_000)
    attempts: list[bool] = []
    execute = engine._execute

    def counted(*args, look_up_entries: bool):
        attempts.append(look_up_entries)
        return execute(*args, look_up_entries=look_up_entries)

    monkeypatch.setattr(engine, "_execute", counted)
    results = ledger_execute(
        [
            EntryRequest(f"fresh-{n}", "USD", ((buyer.pk, "D", 1_000), (revenue.pk, "C", 1_000)))
            for n in range(3)
        ]
    )
    assert [r.status for r in results] == ["posted"] * 3
    assert attempts == [False]
    assert available(buyer) == 4_997_000


def test_a_batch_holding_a_stored_transfer_id_is_rolled_back_and_run_again_looking_ids_up(
    make_buyer, revenue, monkeypatch
):
    buyer = make_buyer("again", 5_000_000)
    legs = ((buyer.pk, "D", 1_000), (revenue.pk, "C", 1_000))
    first = ledger_execute([EntryRequest("again-1", "USD", legs)])[0]
    attempts: list[bool] = []
    execute = engine._execute

    def counted(*args, look_up_entries: bool):
        attempts.append(look_up_entries)
        return execute(*args, look_up_entries=look_up_entries)

    monkeypatch.setattr(engine, "_execute", counted)
    events_before = Event.objects.count()
    results = ledger_execute(
        [
            EntryRequest("again-2", "USD", legs),
            EntryRequest("again-1", "USD", legs),
            EntryRequest("again-1", "USD", ((buyer.pk, "D", 7), (revenue.pk, "C", 7))),
            EntryRequest("again-3", "USD", legs),
        ]
    )
    assert attempts == [False, True]
    assert [r.status for r in results] == ["posted", "replayed", "rejected", "posted"]
    assert results[1].position == first.position
    assert results[2].code == "id_reused"
    # Only the two new entries are written: the first attempt left nothing behind.
    assert Event.objects.count() == events_before + 2
    assert (
        Posting.objects.filter(entry_id__in=[results[0].position, results[3].position]).count() == 4
    )
    assert available(buyer) == 4_997_000
    replayed = {a: s.counters() for a, s in replay().items() if s.counters()[:4] != (0,) * 4}
    assert replayed == live_counters()


def test_a_batch_leaves_the_garbage_collector_as_it_found_it(make_buyer, revenue, monkeypatch):
    buyer = make_buyer("gc", 5_000_000)

    def batch(tag: str) -> list[EntryRequest]:
        return [
            EntryRequest(f"{tag}-{n}", "USD", ((buyer.pk, "D", 1), (revenue.pk, "C", 1)))
            for n in range(3)
        ]

    assert gc.isenabled()
    ledger_execute(batch("on"))
    assert gc.isenabled()
    gc.disable()
    try:
        ledger_execute(batch("off"))
        assert not gc.isenabled()
    finally:
        gc.enable()

    def lost(*args, **kwargs):
        raise DatabaseError("the connection went away")

    monkeypatch.setattr(engine, "_execute", lost)
    with pytest.raises(DatabaseError, match="went away"):
        ledger_execute(batch("lost"))
    assert gc.isenabled()


def test_multi_leg_entry_splits_one_debit_into_several_credits(make_buyer, revenue):
    buyer = make_buyer("split", 10_000_000)
    fees = services.platform_account(kind=Account.Kind.FEES, currency="USD")
    services.entry_post(
        entry=EntryRequest(
            "split-1",
            "USD",
            ((buyer.pk, "D", 1_000_000), (revenue.pk, "C", 900_000), (fees.pk, "C", 100_000)),
            kind="usage",
        )
    )
    assert balance(fees).credits_posted == 100_000
    assert available(buyer) == 9_000_000


def test_replay_from_position_zero_equals_the_live_projection(make_buyer, revenue):
    buyer = make_buyer("replay", 10_000_000)
    services.transfer_create(
        transfer_id="r-1",
        debit_account_id=buyer.pk,
        credit_account_id=revenue.pk,
        amount_micros=1,
        currency="USD",
    )
    services.hold_create(
        hold_id="r-h",
        debit_account_id=buyer.pk,
        credit_account_id=revenue.pk,
        amount_micros=5,
        currency="USD",
        timeout=timedelta(hours=1),
    )
    replayed = {a: s.counters() for a, s in replay().items()}
    assert replayed == live_counters()
    # Damage the projection, rebuild, and get the same numbers back.
    Balance.objects.filter(account=buyer).update(debits_posted=123)
    assert services.balances_rebuild() == 1
    assert live_counters() == replayed


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE core_event SET type = 'Forged'",
        "DELETE FROM core_event",
        "UPDATE billing_posting SET amount_micros = amount_micros + 1",
        "DELETE FROM billing_posting",
    ],
)
def test_events_and_postings_cannot_be_changed_at_the_database(make_buyer, statement):
    make_buyer("fixed", 1_000_000)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)


def test_an_unbalanced_posting_statement_is_refused_by_the_database(make_buyer, revenue):
    buyer = make_buyer("raw", 1_000_000)
    entry = Event.objects.first()
    with (
        pytest.raises(DatabaseError, match="does not balance"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "INSERT INTO billing_posting (entry_position, account_id, currency, side, "
            "amount_micros, recorded_at) VALUES (%s, %s, 'USD', 'D', 5, now()), "
            "(%s, %s, 'USD', 'C', 4, now())",
            [entry.pk, buyer.pk, entry.pk, revenue.pk],
        )


def test_postings_sum_to_zero(make_buyer, revenue):
    buyer = make_buyer("sum", 7_000_000)
    services.transfer_create(
        transfer_id="s-1",
        debit_account_id=buyer.pk,
        credit_account_id=revenue.pk,
        amount_micros=3,
        currency="USD",
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(CASE side WHEN 'D' THEN amount_micros ELSE -amount_micros END), 0)"
            " FROM billing_posting"
        )
        assert cursor.fetchone()[0] == 0


@pytest.mark.parametrize(
    ("account_offset", "entry_offset", "message"),
    [
        (10_000, 0, "account that does not exist"),
        (0, 10_000, "is not an event"),
    ],
)
def test_postings_must_name_real_accounts_and_entries(
    make_buyer, revenue, account_offset, entry_offset, message
):
    buyer = make_buyer("refs", 1_000_000)
    entry = Event.objects.first()
    with (
        pytest.raises(DatabaseError, match=message),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "INSERT INTO billing_posting (entry_position, account_id, currency, side, "
            "amount_micros, recorded_at) VALUES (%s, %s, 'USD', 'D', 5, now()), "
            "(%s, %s, 'USD', 'C', 5, now())",
            [
                entry.pk + entry_offset,
                buyer.pk + account_offset,
                entry.pk + entry_offset,
                revenue.pk,
            ],
        )
