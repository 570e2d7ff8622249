"""The ledger under real concurrency: threads, each on its own connection,
committing real transactions against PostgreSQL."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from core.errors import IdempotencyConflict
from core.models import Event, Organization
from ledger import services
from ledger.engine import EntryRequest, HoldPostRequest, HoldRequest, HoldVoidRequest
from ledger.models import Account, Balance, Posting
from ledger.projection import replay

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 32
OPERATIONS_PER_THREAD = 1000
HOT_ACCOUNTS = 8
START_BALANCE = 1_000_000


def run_threads(count: int, target) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def body(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def open_hot_accounts() -> list[int]:
    ids = []
    for n in range(HOT_ACCOUNTS):
        org = Organization.objects.create(name=f"hot-{n}", kind="buyer")
        account = services.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
        services.credits_grant(
            organization=org,
            amount_micros=START_BALANCE,
            currency="USD",
            reason="float",
            transfer_id=f"float-{n}",
        )
        ids.append(account.pk)
    return ids


def snapshot(account_ids: list[int]) -> tuple[int, int]:
    """Total posted and the lowest available balance, read in one statement."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sum(credits_posted - debits_posted), "
            "min(credits_posted - debits_posted - debits_pending) "
            "FROM billing_balance WHERE account_id = ANY(%s)",
            [account_ids],
        )
        return cursor.fetchone()


def test_bank_invariant_holds_under_32_concurrent_writers_and_readers():
    # given eight hot accounts, a million micro-units each
    accounts = open_hot_accounts()
    total = HOT_ACCOUNTS * START_BALANCE
    stop = threading.Event()
    reads: list[tuple[int, int]] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def reader() -> None:
        try:
            # Read all through the run, a few hundred times a second: often
            # enough to catch a torn total, not so often as to starve writers.
            while not stop.wait(0.003):
                reads.append(snapshot(accounts))
        finally:
            connections.close_all()

    def writer(index: int) -> None:
        rng = random.Random(index)
        seen: dict[str, int] = {}
        for n in range(OPERATIONS_PER_THREAD):
            debit, credit = rng.sample(accounts, 2)
            amount = rng.randint(1, 200_000)
            roll = rng.random()
            if roll < 0.7:
                commands = [
                    EntryRequest(
                        f"w{index}-{n}", "USD", ((debit, "D", amount), (credit, "C", amount))
                    )
                ]
            else:
                hold_id = f"w{index}-h{n}"
                timeout = timezone.now() + timedelta(minutes=10)
                finish = (
                    HoldPostRequest(hold_id, rng.randint(1, amount))
                    if roll < 0.85
                    else HoldVoidRequest(hold_id)
                )
                commands = [HoldRequest(hold_id, debit, credit, amount, "USD", timeout)]
                [created] = services.ledger_execute(commands)
                seen[created.code or created.status] = (
                    seen.get(created.code or created.status, 0) + 1
                )
                if not created.ok:
                    continue
                commands = [finish]
            for result in services.ledger_execute(commands):
                key = result.code or result.status
                seen[key] = seen.get(key, 0) + 1
        with lock:
            for key, value in seen.items():
                outcomes[key] = outcomes.get(key, 0) + value

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    # when 32 threads run a thousand operations each
    try:
        errors = run_threads(THREADS, writer)
    finally:
        stop.set()
        for thread in readers:
            thread.join()

    # then nothing blew up, and every read saw the same total and no overdraft
    assert errors == []
    assert reads, "the readers read nothing"
    assert {r[0] for r in reads} == {total}
    assert min(r[1] for r in reads) >= 0
    assert set(outcomes) <= {"posted", "exceeds_limit"}
    assert outcomes["posted"] > THREADS * OPERATIONS_PER_THREAD // 2
    final_total, lowest = snapshot(accounts)
    assert final_total == total and lowest >= 0
    # every entry sums to zero, and the projection equals a fresh replay
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM (SELECT entry_position FROM billing_posting GROUP BY "
            "entry_position HAVING sum(CASE side WHEN 'D' THEN amount_micros "
            "ELSE -amount_micros END) <> 0) unbalanced"
        )
        assert cursor.fetchone()[0] == 0
    live = {
        b.account_id: (
            b.debits_posted,
            b.credits_posted,
            b.debits_pending,
            b.credits_pending,
            b.position,
        )
        for b in Balance.objects.all()
    }
    assert {a: s.counters() for a, s in replay().items()} == live
    assert all(b.debits_pending == 0 for b in Balance.objects.filter(account_id__in=accounts))


def test_64_concurrent_appends_at_one_version_have_exactly_one_winner():
    from core.errors import ConcurrencyConflict
    from core.eventstore import NewEvent, event_append, stream_read, stream_version

    event_append(
        stream_type="test",
        stream_id="race-1",
        expected_version=0,
        events=[NewEvent("Opened", {"n": 0})],
    )
    wins: list[int] = []
    conflicts: list[int] = []

    def append_once(index: int) -> None:
        try:
            event_append(
                stream_type="test",
                stream_id="race-1",
                expected_version=1,
                events=[NewEvent("Appended", {"by": index})],
            )
            wins.append(index)
        except ConcurrencyConflict:
            conflicts.append(index)

    assert run_threads(64, append_once) == []
    assert len(wins) == 1 and len(conflicts) == 63

    def append_with_retry(index: int) -> None:
        while True:
            try:
                event_append(
                    stream_type="test",
                    stream_id="race-2",
                    expected_version=stream_version("race-2"),
                    events=[NewEvent("Appended", {"by": index})],
                )
                return
            except ConcurrencyConflict:
                continue

    assert run_threads(64, append_with_retry) == []
    events = stream_read("race-2")
    assert [e.version for e in events] == list(range(1, 65))
    assert sorted(e.payload["by"] for e in events) == list(range(64))
    positions = [e.position for e in events]
    assert positions == sorted(positions)


def test_the_same_transfer_sent_50_times_at_once_takes_effect_once():
    [a, b] = open_hot_accounts()[:2]
    results = []

    def send(index: int) -> None:
        results.append(
            services.transfer_create(
                transfer_id="dup-1",
                debit_account_id=a,
                credit_account_id=b,
                amount_micros=250_000,
                currency="USD",
            )
        )

    assert run_threads(50, send) == []
    assert sorted(r.status for r in results).count("posted") == 1
    assert len({r.position for r in results}) == 1
    assert Event.objects.filter(stream_id="entry:dup-1").count() == 1
    assert Posting.objects.filter(entry_id=results[0].position).count() == 2
    assert Balance.objects.get(account_id=a).debits_posted == 250_000

    with pytest.raises(IdempotencyConflict):
        services.transfer_create(
            transfer_id="dup-1",
            debit_account_id=a,
            credit_account_id=b,
            amount_micros=250_001,
            currency="USD",
        )


def test_a_hold_posted_and_voided_at_once_resolves_exactly_once():
    [a, b] = open_hot_accounts()[:2]
    services.hold_create(
        hold_id="race-hold",
        debit_account_id=a,
        credit_account_id=b,
        amount_micros=400_000,
        currency="USD",
        timeout=timedelta(minutes=5),
    )
    outcomes = []

    def resolve(index: int) -> None:
        command = (
            HoldPostRequest("race-hold", 100_000) if index % 2 else HoldVoidRequest("race-hold")
        )
        outcomes.append(services.ledger_execute([command])[0])

    assert run_threads(20, resolve) == []
    assert sum(1 for r in outcomes if r.status == "posted") == 1
    assert Event.objects.filter(stream_id="hold:race-hold").count() == 2
    balance = Balance.objects.get(account_id=a)
    assert balance.debits_pending == 0
    assert balance.debits_posted in (0, 100_000)
