"""Ledger throughput on PostgreSQL: transfers per second through the ledger
services, batched (many transfers per transaction) and one per transaction,
among 10 hot accounts, beside raw INSERTs of the same posting rows.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/ledger.py [--quick]

Runs in a throwaway database (test_<name>), created and dropped here.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


def bench_batched(accounts: list[int], total: int, batch: int) -> float:
    from ledger.engine import ledger_execute

    work = list(transfers(accounts, total, "batched", 1))
    start = time.perf_counter()
    for offset in range(0, total, batch):
        results = ledger_execute(work[offset : offset + batch])
        assert all(r.status == "posted" for r in results)
    return total / (time.perf_counter() - start)


def bench_single(accounts: list[int], total: int, threads: int) -> float:
    from ledger.engine import ledger_execute

    per_thread = total // threads
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for entry in transfers(accounts, per_thread, f"single{threads}-{index}", 100 + index):
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


def _single_process(args: tuple[list[int], int, int]) -> int:
    from ledger.engine import ledger_execute

    accounts, count, index = args
    connections.close_all()  # a fresh connection per process
    for entry in transfers(accounts, count, f"proc-{index}", 200 + index):
        assert ledger_execute([entry])[0].status == "posted"
    connections.close_all()
    return count


def bench_single_processes(accounts: list[int], total: int, processes: int) -> float:
    """One transfer per transaction from several processes, as a web tier of
    several workers would send them (no shared interpreter lock between them)."""
    import multiprocessing

    connections.close_all()
    context = multiprocessing.get_context("fork")
    per_process = total // processes
    with context.Pool(processes) as pool:
        start = time.perf_counter()
        done = sum(
            pool.map(_single_process, [(accounts, per_process, i) for i in range(processes)])
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
    batched_total, single_total, batch = (
        (5_000, 1_000, 500) if args.quick else (100_000, 10_000, 1_000)
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
        batched = bench_batched(accounts, batched_total, batch)
        single_1 = bench_single(accounts, single_total, 1)
        single_4 = bench_single(accounts, single_total, 4)
        single_4p = bench_single_processes(accounts, single_total, 4)
        raw_batched = bench_raw_batched(accounts, batched_total, batch)
        raw_single = bench_raw_single(accounts, single_total)

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

    result = {
        "transfers_batched_per_s": round(batched),
        "transfers_single_tx_per_s_1_thread": round(single_1),
        "transfers_single_tx_per_s_4_threads": round(single_4),
        "transfers_single_tx_per_s_4_processes": round(single_4p),
        "raw_insert_batched_per_s": round(raw_batched),
        "raw_insert_single_tx_per_s": round(raw_single),
        "batch_size": batch,
        "hot_accounts": HOT_ACCOUNTS,
        "ratio": round(batched / raw_batched, 3),
        "ratio_single": round(max(single_1, single_4, single_4p) / raw_single, 3),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
