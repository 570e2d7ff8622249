"""The one-round-trip single transfer (``billing.single_transfer``) held to the
plain ledger engine: the same commands, run once each way from the same books,
give the same results, events, postings, holds and balances, and both agree with
the projection's replay. Then the fast path under real concurrent transactions,
and its one round trip counted on the wire."""

from __future__ import annotations

import contextlib
import random
import tempfile
import threading
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.models import Event, Organization
from ledger import services, single_transfer
from ledger.engine import EntryRequest, HoldPostRequest, HoldRequest, HoldVoidRequest
from ledger.models import Account, Balance, Hold, Posting
from ledger.projection import replay

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the single-transfer function is PostgreSQL's"
)

# --- the same commands through both engines ----------------------------------


@pytest.fixture
def books() -> list[int]:
    """Accounts of every shape the rule distinguishes: buyers' credit with a zero
    limit and with a credit limit, an empty one, a provider's payable, platform
    accounts without limits on either normal side, a debit-normal account with a
    limit, and one in another currency. Then an id no account has."""

    def buyer(name: str, seed: int, limit: int = 0) -> int:
        org = Organization.objects.create(name=name, kind="buyer")
        account = services.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
        if limit:
            services.account_set_overdraft_limit(account=account, limit_micros=limit)
        if seed:
            services.credits_grant(
                organization=org,
                amount_micros=seed,
                currency="USD",
                reason="seed",
                transfer_id=f"seed:{name}",
            )
        return account.pk

    provider = Organization.objects.create(name="provider", kind="provider")
    payable = services.account_open(
        organization=provider, kind=Account.Kind.PAYABLE, currency="USD"
    )
    receivable = services.account_open(
        organization=Organization.objects.create(name="postpaid", kind="buyer"),
        kind=Account.Kind.RECEIVABLE,
        currency="USD",
    )
    # A debit-normal account with a limit (no service sets one; the rule covers it).
    Account.objects.filter(pk=receivable.pk).update(overdraft_limit_micros=300)
    euro = services.account_open(
        organization=Organization.objects.create(name="euro", kind="buyer"),
        kind=Account.Kind.CREDIT,
        currency="EUR",
    )
    ids = [
        buyer("a", 10_000),
        buyer("b", 2_000, limit=500),
        buyer("c", 0),
        payable.pk,
        services.platform_account(kind=Account.Kind.REVENUE, currency="USD").pk,
        services.platform_account(kind=Account.Kind.PROMO, currency="USD").pk,
        receivable.pk,
        euro.pk,
    ]
    return [*ids, max(ids) + 1000]


ACCOUNT = st.integers(0, 8)
AMOUNT = st.one_of(st.integers(1, 3_000), st.integers(3_000, 15_000))
ID = st.integers(0, 5)  # few ids: reuses, replays and conflicts come often

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("transfer"), ACCOUNT, ACCOUNT, AMOUNT, ID, st.booleans()),
        st.tuples(st.just("split"), ACCOUNT, ACCOUNT, ACCOUNT, AMOUNT, AMOUNT, ID),
        st.tuples(st.just("again")),
        st.tuples(st.just("exact"), ACCOUNT, ACCOUNT, ID, st.sampled_from([-1, 0, 1])),
        st.tuples(st.just("hold"), ACCOUNT, ACCOUNT, AMOUNT, ID),
        st.tuples(st.just("post"), ID, st.one_of(st.none(), AMOUNT)),
        st.tuples(st.just("void"), ID),
    ),
    min_size=1,
    max_size=25,
)


def commands(operations: list[tuple], ids: list[int], now) -> list:
    """The operations as ledger commands, one per call; "again" repeats the last."""
    made: list = []
    for op in operations:
        kind = op[0]
        if kind == "transfer":
            _, debit, credit, amount, tid, long_text = op
            made.append(
                EntryRequest(
                    transfer_id=f"t{tid}",
                    currency="USD",
                    legs=((ids[debit], "D", amount), (ids[credit], "C", amount)),
                    description="é" * 40 if long_text else "",
                )
            )
        elif kind == "split":
            _, debit, first, second, one, two, tid = op
            made.append(
                EntryRequest(
                    transfer_id=f"t{tid}",
                    currency="USD",
                    legs=(
                        (ids[debit], "D", one + two),
                        (ids[first], "C", one),
                        (ids[second], "C", two),
                    ),
                    kind="usage",
                )
            )
        elif kind == "exact":
            _, debit, credit, tid, off_by = op
            made.append(Exact(f"t{tid}", ids[debit], ids[credit], off_by))
        elif kind == "again":
            if made:
                made.append(made[-1])
        elif kind == "hold":
            _, debit, credit, amount, hid = op
            made.append(
                HoldRequest(f"h{hid}", ids[debit], ids[credit], amount, "USD", now + timedelta(1))
            )
        elif kind == "post":
            made.append(HoldPostRequest(f"h{op[1]}", op[2]))
        else:
            made.append(HoldVoidRequest(f"h{op[1]}"))
    return made


@dataclass(frozen=True)
class Exact:
    """A transfer of exactly what the debit account can still give (available plus
    its limit), give or take one: the limit's boundary, decided when it runs."""

    transfer_id: str
    debit: int
    credit: int
    off_by: int

    def entry(self) -> EntryRequest:
        room = 0
        balance = Balance.objects.select_related("account").filter(account_id=self.debit).first()
        if balance is not None:
            if balance.account.normal_side == "C":
                available = balance.credits_posted - balance.debits_posted - balance.debits_pending
            else:
                available = balance.debits_posted - balance.credits_posted - balance.credits_pending
            room = available + (balance.account.overdraft_limit_micros or 0)
        amount = max(1, room + self.off_by)
        return EntryRequest(
            self.transfer_id, "USD", ((self.debit, "D", amount), (self.credit, "C", amount))
        )


def single_call(command, now) -> tuple[services.LedgerResult, bool]:
    """What ``ledger_execute`` does with one command on PostgreSQL, with whether
    the single-transfer function posted it (rather than handing it back)."""
    if isinstance(command, Exact):
        command = command.entry()
    if isinstance(command, EntryRequest) and len({leg[0] for leg in command.legs}) == len(
        command.legs
    ):
        position = single_transfer.entry_post(
            transfer_id=command.transfer_id,
            currency=command.currency,
            kind=command.kind,
            description=command.description,
            legs=command.legs,
            metadata={"actor": "system"},
            now=now,
        )
        if position is not None:
            return services.LedgerResult(status="posted", position=position), True
    with single_transfer.plain_engine_only():
        return services.ledger_execute([command], now=now)[0], False


def run_and_read(made: list, ids: list[int], now, *, fast: bool) -> dict:
    """Run the commands one call each and read back what they left, with event
    positions as their rank among this run's events (sequences do not roll back)."""
    start = Event.objects.order_by("-position").values_list("position", flat=True).first() or 0
    if fast:
        calls = [single_call(command, now) for command in made]
    else:
        with single_transfer.plain_engine_only():
            calls = [
                (
                    services.ledger_execute(
                        [command.entry() if isinstance(command, Exact) else command], now=now
                    )[0],
                    False,
                )
                for command in made
            ]
    results = [result for result, _ in calls]
    events = list(
        Event.objects.filter(position__gt=start)
        .order_by("position")
        .values_list(
            "position",
            "tenant_id",
            "stream_type",
            "stream_id",
            "version",
            "type",
            "schema_version",
            "payload",
            "metadata",
            "recorded_at",
        )
    )
    rank = {row[0]: index for index, row in enumerate(events)}

    def norm(position: int | None):
        return ("new", rank[position]) if position in rank else ("old", position)

    replayed = replay()
    live = {}
    for b in Balance.objects.filter(account_id__in=ids):
        counters = (
            b.debits_posted,
            b.credits_posted,
            b.debits_pending,
            b.credits_pending,
            b.position,
        )
        state = replayed.get(b.account_id)
        assert counters == (state.counters() if state else (0, 0, 0, 0, 0))
        live[b.account_id] = (*counters[:4], norm(counters[4]))
    return {
        "by_function": [by_function for _, by_function in calls],
        "results": [
            (r.status, norm(r.position) if r.position else None, r.code, r.message, r.details)
            for r in results
        ],
        "events": [row[1:] for row in events],
        "postings": sorted(
            (norm(p[0]), *p[1:])
            for p in Posting.objects.filter(entry_id__gt=start).values_list(
                "entry_id", "account_id", "currency", "side", "amount_micros", "recorded_at"
            )
        ),
        "holds": sorted(
            Hold.objects.filter(created_at=now).values_list(
                "hold_id",
                "debit_account_id",
                "credit_account_id",
                "currency",
                "amount_micros",
                "posted_micros",
                "state",
                "expires_at",
                "resolved_at",
            )
        ),
        "balances": live,
    }


@pytest.mark.django_db
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=OPERATIONS)
def test_single_transfers_equal_the_plain_engine(books, operations):
    # given the same books and the same commands
    now = timezone.now()
    made = commands(operations, books, now)
    # when they run through the single-transfer path, then (rolled back) through
    # the plain engine alone
    runs = []
    for fast_path in (True, False):
        sid = transaction.savepoint()
        try:
            runs.append(run_and_read(made, books, now, fast=fast_path))
        finally:
            transaction.savepoint_rollback(sid)
    fast, plain_run = runs
    # then the function posted exactly the entries the plain engine posted (it
    # handed back no entry it could have posted) ...
    assert fast["by_function"] == [
        isinstance(command, EntryRequest | Exact) and result[0] == "posted"
        for command, result in zip(made, plain_run["results"], strict=True)
    ]
    # ... and every result, event, posting, hold and balance is the same
    assert fast["results"] == plain_run["results"]
    assert fast["events"] == plain_run["events"]
    assert fast["postings"] == plain_run["postings"]
    assert fast["holds"] == plain_run["holds"]
    assert fast["balances"] == plain_run["balances"]


@pytest.mark.django_db
def test_rejections_and_replays_are_the_plain_engines(books):
    # given a buyer with 10,000 and a zero limit, and one with a credit limit of 500
    a, b, c, _payable, revenue, *_rest, euro, missing = books
    now = timezone.now()

    def both(command):
        results = []
        for plain in (False, True):
            sid = transaction.savepoint()
            with single_transfer.plain_engine_only() if plain else contextlib.nullcontext():
                results.append(services.ledger_execute([command], now=now)[0])
            transaction.savepoint_rollback(sid)
        fast, plain_result = results
        if fast.status == "posted":  # positions come from a sequence: not rolled back
            assert plain_result.status == "posted"
        else:
            assert fast == plain_result
        return fast

    # when entries break a limit, name unknown or foreign accounts, then
    over = both(EntryRequest("over", "USD", ((a, "D", 10_001), (revenue, "C", 10_001))))
    assert (over.code, over.details) == (
        "exceeds_limit",
        {"account": a, "available_micros": 10_000, "missing_micros": 1},
    )
    credit_limit = both(EntryRequest("cl", "USD", ((b, "D", 2_501), (revenue, "C", 2_501))))
    assert credit_limit.details["missing_micros"] == 1
    assert both(EntryRequest("ok", "USD", ((b, "D", 2_500), (revenue, "C", 2_500)))).ok
    assert both(EntryRequest("m", "USD", ((missing, "D", 1), (a, "C", 1)))).code == (
        "account_not_found"
    )
    assert both(EntryRequest("e", "USD", ((euro, "D", 1), (a, "C", 1)))).code == "invalid"
    # and an id used before replays its first result or refuses another body
    first = services.ledger_execute([EntryRequest("dup", "USD", ((a, "D", 5), (c, "C", 5)))])[0]
    again = both(EntryRequest("dup", "USD", ((a, "D", 5), (c, "C", 5))))
    assert (again.status, again.position) == ("replayed", first.position)
    assert both(EntryRequest("dup", "USD", ((a, "D", 6), (c, "C", 6)))).code == "id_reused"


# --- real concurrent transactions ---------------------------------------------

THREADS = 4
TRANSFERS_PER_THREAD = 150
SHARED_ACCOUNTS = 4
START = 20_000


def _run_threads(target) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def body(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.django_db(transaction=True)
def test_four_threads_lose_no_update_and_never_break_a_limit():
    # given four buyers' credit accounts, one with a credit limit, each with 20,000
    accounts = []
    for n in range(SHARED_ACCOUNTS):
        org = Organization.objects.create(name=f"shared-{n}", kind="buyer")
        account = services.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
        if n == 0:
            services.account_set_overdraft_limit(account=account, limit_micros=5_000)
        services.credits_grant(
            organization=org,
            amount_micros=START,
            currency="USD",
            reason="float",
            transfer_id=f"float-{n}",
        )
        accounts.append(account.pk)
    limits = {pk: (5_000 if n == 0 else 0) for n, pk in enumerate(accounts)}
    outcomes: list[list] = [[] for _ in range(THREADS)]

    # when four threads, each on its own connection outside any transaction, send
    # transfers among them one per call (large enough that limits are hit), and
    # every thread also sends the same few transfer ids
    def work(index: int) -> None:
        rng = random.Random(index)
        for n in range(TRANSFERS_PER_THREAD):
            debit, credit = rng.sample(accounts, 2)
            if n % 25 == 0:
                transfer_id, amount = f"shared-{n}", 100
                debit, credit = accounts[0], accounts[1]
            else:
                transfer_id, amount = f"w{index}-{n}", rng.randint(1, 4_000)
            entry = EntryRequest(transfer_id, "USD", ((debit, "D", amount), (credit, "C", amount)))
            assert not connection.in_atomic_block
            outcomes[index].append((entry, services.ledger_execute([entry])[0]))

    errors = _run_threads(work)

    # then nothing failed, every answer is posted, replayed or refused for a limit
    assert errors == []
    flat = [pair for thread in outcomes for pair in thread]
    statuses = {(r.status, r.code) for _, r in flat}
    assert statuses <= {("posted", ""), ("replayed", ""), ("rejected", "exceeds_limit")}
    assert ("rejected", "exceeds_limit") in statuses
    # and each shared id was posted at most once, its other sends replaying that
    # position; a send that found account 0 at its limit was refused and wrote nothing
    by_id: dict[str, list] = {}
    for entry, result in flat:
        if entry.transfer_id.startswith("shared-"):
            by_id.setdefault(entry.transfer_id, []).append(result)
    assert len(by_id) == TRANSFERS_PER_THREAD // 25
    for results in by_id.values():
        posted = [r for r in results if r.status == "posted"]
        assert len(posted) <= 1
        replayed = {r.position for r in results if r.status == "replayed"}
        assert replayed <= {r.position for r in posted}
        refused = [r for r in results if r.status == "rejected"]
        assert all(r.code == "exceeds_limit" and r.position is None for r in refused)
    # and no update was lost: the balances are the float moved by what was posted
    expected = {pk: START for pk in accounts}
    for entry, result in flat:
        if result.status == "posted":
            (debit, _, amount), (credit, _, _) = entry.legs
            expected[debit] -= amount
            expected[credit] += amount
    balances = {b.account_id: b for b in Balance.objects.filter(account_id__in=accounts)}
    for pk in accounts:
        available = balances[pk].credits_posted - balances[pk].debits_posted
        assert available == expected[pk]
        assert available >= -limits[pk]
    # and the projection equals the replay of the events
    replayed = replay()
    for pk, b in balances.items():
        assert replayed[pk].counters() == (
            b.debits_posted,
            b.credits_posted,
            b.debits_pending,
            b.credits_pending,
            b.position,
        )


@pytest.mark.django_db(transaction=True)
def test_inside_a_callers_transaction_the_transfer_rolls_back_with_it(books):
    # given a buyer with 10,000
    a, _b, c, *_rest = books
    before = Event.objects.count(), Posting.objects.count()

    # when a transfer posts inside a transaction that then fails
    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), transaction.atomic():
        result = services.ledger_execute([EntryRequest("inner", "USD", ((a, "D", 7), (c, "C", 7)))])
        assert result[0].status == "posted"
        raise Abandoned

    # then nothing of it stays, and the same id posts afresh afterwards
    assert (Event.objects.count(), Posting.objects.count()) == before
    assert Balance.objects.get(account_id=a).debits_posted == 0
    again = services.ledger_execute([EntryRequest("inner", "USD", ((a, "D", 7), (c, "C", 7)))])
    assert again[0].status == "posted"


# --- one round trip -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_lone_transfer_is_one_round_trip(books):
    # given a buyer with credits, and a first transfer (which prepares the statement)
    a, _b, c, *_rest = books
    services.ledger_execute([EntryRequest("warm", "USD", ((a, "D", 1), (c, "C", 1)))])
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        # when one more transfer is sent outside any transaction, its wire traced
        pgconn.trace(trace.fileno())
        try:
            result = services.ledger_execute(
                [EntryRequest("traced", "USD", ((a, "D", 2), (c, "C", 2)))]
            )[0]
        finally:
            pgconn.untrace()
        trace.seek(0)
        sent = [line.split("\t") for line in trace.read().splitlines()]
    # then it posted, with one message batch sent and answered: no BEGIN, no COMMIT
    assert result.status == "posted"
    from_client = [fields[fields.index("F") + 2] for fields in sent if "F" in fields[:2]]
    assert from_client.count("Sync") == 1, from_client
    assert "Query" not in from_client, from_client
    assert Posting.objects.filter(entry_id=result.position).count() == 2
