"""Ledger throughput on PostgreSQL: transfers per second through the ledger
services, batched (many transfers per transaction) and one per transaction,
among 10 hot accounts, beside raw INSERTs of the same posting rows.

One transfer per transaction takes ``ledger.single_transfer`` (one round trip);
it is measured from 1 thread and from 4 threads (and 4 processes), and the plain
engine's figure for the same work beside it. Each is set against the raw
single-transaction INSERT of the same rows in the same run, and batched against
raw batched: the measures run in interleaved rounds (3 with --quick, 5 without),
each round every measure once, and each ratio is the median of the rounds'
ratios, so a neighbour's load that comes and goes on a shared machine weighs on
both sides of a ratio alike. The tables get a first untimed batch and an
ANALYZE before the rounds, as autovacuum would have by then: a freshly made
table's missing statistics otherwise plan the journal trigger's join to the
event table as a scan of the whole table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")

import django

django.setup()

from django.db import connection, connections, transaction
from django.test.utils import setup_test_environment
from django.utils import timezone

HOT_ACCOUNTS = 10
MEASURES = ("batched", "raw_batched", "raw_single", "single_1", "single_4", "single_4p", "plain_1")


def make_accounts() -> list[int]:
    from core.models import Organization
    from ledger import services
    from ledger.models import Account

    ids = []
    for n in range(HOT_ACCOUNTS):
        org = Organization.objects.create(name=f"bench-buyer-{n}", kind="buyer")
        account = services.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
        services.credits_grant(
            organization=org,
            amount_micros=10**14,
            currency="USD",
            reason="bench float",
            transfer_id=f"bench-seed-{n}",
        )
        ids.append(account.pk)
    return ids


def transfers(accounts: list[int], count: int, tag: str, seed: int):
    from ledger.engine import EntryRequest

    rng = random.Random(seed)
    for n in range(count):
        debit, credit = rng.sample(accounts, 2)
        amount = rng.randint(1, 1_000_000)
        yield EntryRequest(
            transfer_id=f"{tag}-{n}",
            currency="USD",
            legs=((debit, "D", amount), (credit, "C", amount)),
        )


def bench_batched(accounts: list[int], total: int, batch: int, tag: str = "batched") -> float:
    from ledger.engine import ledger_execute

    work = list(transfers(accounts, total, tag, 1))
    start = time.perf_counter()
    for offset in range(0, total, batch):
        results = ledger_execute(work[offset : offset + batch])
        assert all(r.status == "posted" for r in results)
    return total / (time.perf_counter() - start)


def bench_single(
    accounts: list[int], total: int, threads: int, *, plain: bool = False, round_: int = 0
) -> float:
    from ledger.engine import ledger_execute
    from ledger.single_transfer import plain_engine_only

    per_thread = total // threads
    failures: list[BaseException] = []
    tag = f"{'plain' if plain else 'single'}-r{round_}-"

    def worker(index: int) -> None:
        try:
            with plain_engine_only() if plain else contextlib.nullcontext():
                for entry in transfers(
                    accounts, per_thread, f"{tag}{threads}-{index}", 100 + index
                ):
                    assert ledger_execute([entry])[0].status == "posted"
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return per_thread * threads / elapsed


def _single_process(args: tuple[list[int], int, int, int]) -> int:
    from ledger.engine import ledger_execute

    accounts, count, index, round_ = args
    connections.close_all()  # a fresh connection per process
    for entry in transfers(accounts, count, f"proc-r{round_}-{index}", 200 + index):
        assert ledger_execute([entry])[0].status == "posted"
    connections.close_all()
    return count


def bench_single_processes(
    accounts: list[int], total: int, processes: int, round_: int = 0
) -> float:
    """One transfer per transaction from several processes, as a web tier of
    several workers would send them (no shared interpreter lock between them)."""
    import multiprocessing

    connections.close_all()
    context = multiprocessing.get_context("fork")
    per_process = total // processes
    with context.Pool(processes) as pool:
        start = time.perf_counter()
        done = sum(
            pool.map(
                _single_process, [(accounts, per_process, i, round_) for i in range(processes)]
            )
        )
        elapsed = time.perf_counter() - start
    return done / elapsed


def raw_rows(accounts: list[int], total: int):
    now = timezone.now()
    rng = random.Random(7)
    for n in range(total):
        debit, credit = rng.sample(accounts, 2)
        amount = rng.randint(1, 1_000_000)
        yield (n, debit, "USD", "D", amount, now)
        yield (n, credit, "USD", "C", amount, now)


RAW_COLUMNS = "entry_position, account_id, currency, side, amount_micros, recorded_at"


def bench_raw_batched(accounts: list[int], total: int, batch: int) -> float:
    rows = list(raw_rows(accounts, total))
    start = time.perf_counter()
    for offset in range(0, len(rows), 2 * batch):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO bench_raw_posting ({RAW_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                rows[offset : offset + 2 * batch],
            )
    return total / (time.perf_counter() - start)


def bench_raw_single(accounts: list[int], total: int) -> float:
    rows = list(raw_rows(accounts, total))
    start = time.perf_counter()
    for offset in range(0, len(rows), 2):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO bench_raw_posting ({RAW_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s), (%s, %s, %s, %s, %s, %s)",
                [*rows[offset], *rows[offset + 1]],
            )
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = parser.parse_args()
    batched_total, single_total, batch, rounds = (
        (6_000, 1_500, 500, 3) if args.quick else (100_000, 10_000, 1_000, 5)
    )
    if connection.vendor != "postgresql":
        sys.exit("bench/ledger.py measures PostgreSQL: set DATABASE_URL=postgres://...")

    setup_test_environment()
    db_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        accounts = make_accounts()
        with connection.cursor() as cursor:
            # The same columns as billing_posting: no triggers, no foreign keys.
            cursor.execute(
                "CREATE TABLE bench_raw_posting (id bigserial PRIMARY KEY, "
                "entry_position bigint NOT NULL, account_id bigint NOT NULL, "
                "currency varchar(3) NOT NULL, side varchar(1) NOT NULL, "
                "amount_micros bigint NOT NULL, recorded_at timestamptz NOT NULL)"
            )
            cursor.execute("CREATE INDEX ON bench_raw_posting (account_id, recorded_at)")
        bench_batched(accounts, 2 * batch, batch, tag="warm-up")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        runs: dict[str, list[float]] = {name: [] for name in MEASURES}
        for round_ in range(rounds):
            connections.close_all()
            part, single_part = batched_total // rounds, single_total // rounds
            runs["batched"].append(bench_batched(accounts, part, batch, tag=f"batched-r{round_}"))
            runs["raw_batched"].append(bench_raw_batched(accounts, part, batch))
            runs["raw_single"].append(bench_raw_single(accounts, single_part))
            runs["single_1"].append(bench_single(accounts, single_part, 1, round_=round_))
            runs["single_4"].append(bench_single(accounts, single_part, 4, round_=round_))
            runs["single_4p"].append(bench_single_processes(accounts, single_part, 4, round_))
            runs["plain_1"].append(
                bench_single(accounts, single_part, 1, plain=True, round_=round_)
            )

        from ledger.models import Balance
        from ledger.projection import replay

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
        replayed = {a: s.counters() for a, s in replay().items()}
        assert live == replayed, "projection differs from replay"
    finally:
        connections.close_all()
        connection.creation.destroy_test_db(db_name, verbosity=0)

    rate = {name: statistics.median(values) for name, values in runs.items()}

    def ratios(name: str, baseline: str) -> list[float]:
        return [
            round(value / base, 3) for value, base in zip(runs[name], runs[baseline], strict=True)
        ]

    ratio = {
        "batched": ratios("batched", "raw_batched"),
        "single_1": ratios("single_1", "raw_single"),
        "single_4": ratios("single_4", "raw_single"),
        "single_4p": ratios("single_4p", "raw_single"),
        "plain_1": ratios("plain_1", "raw_single"),
    }
    result = {
        "transfers_batched_per_s": round(rate["batched"]),
        "transfers_single_tx_per_s_1_thread": round(rate["single_1"]),
        "transfers_single_tx_per_s_4_threads": round(rate["single_4"]),
        "transfers_single_tx_per_s_4_processes": round(rate["single_4p"]),
        "transfers_single_tx_plain_engine_per_s_1_thread": round(rate["plain_1"]),
        "raw_insert_batched_per_s": round(rate["raw_batched"]),
        "raw_insert_single_tx_per_s": round(rate["raw_single"]),
        "raw_insert_single_tx_per_s_rounds": [round(v) for v in runs["raw_single"]],
        "batch_size": batch,
        "hot_accounts": HOT_ACCOUNTS,
        "rounds": rounds,
        "ratio": statistics.median(ratio["batched"]),
        "ratio_single_1_thread": statistics.median(ratio["single_1"]),
        "ratio_single_4_threads": statistics.median(ratio["single_4"]),
        "ratio_single_4_processes": statistics.median(ratio["single_4p"]),
        "ratio_single_plain_engine_1_thread": statistics.median(ratio["plain_1"]),
        "ratios_by_round": ratio,
        # The goal holds from 1 thread and from 4: the lower of the two.
        "ratio_single": min(
            statistics.median(ratio["single_1"]), statistics.median(ratio["single_4"])
        ),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
