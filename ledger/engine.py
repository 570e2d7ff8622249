"""Writes to the ledger.

Everything funnels into ``ledger_execute``: a batch of commands (journal
entries, hold create / post / void) applied in one transaction, TigerBeetle
style, with one result per command. Inside it:

1. the balance rows of every account involved are locked, in account order
   (``SELECT … ORDER BY account_id FOR UPDATE``), so concurrent batches queue
   instead of deadlocking, then the holds involved, in id order;
2. hold ids already in the event store are looked up, and transfer ids are
   left to the event table's unique key: a batch that hits a used one is rolled
   back and run again with them looked up (``_EntryIdTaken``). The same id with
   the same body is a replay (the first result, no effect), with a different
   body it is refused;
3. commands are applied in order to the in-memory balances with
   ``ledger.projection.apply_event`` — the same function a replay uses — and a
   command that would break an account's limit is rejected alone;
4. the events, postings, holds and new balances are written (on PostgreSQL in
   one statement of data-modifying CTEs).

The whole block is retried from a fresh read on a serialization failure,
a deadlock, or a unique-key race with a concurrent duplicate.

On PostgreSQL a lone journal entry is first offered to ``ledger.single_transfer``
(one round trip, the same rule); what it does not post comes here.

The modules by role: ``ledger.commands`` (what a caller sends and gets back, and
the checks that need no database), ``ledger.applier`` (step 3: decides, holds no
database handle) and this one (steps 1, 2 and 4: reads what the applier needs and
writes exactly the rows it decided). The read and write statements stay here,
beside the transaction that runs them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from django.db import IntegrityError, connection
from django.utils import timezone

from core.collector import collector_paused
from core.db import RetryTransaction, as_utc, is_postgres, retry_transaction, server_cursor
from core.eventstore import (
    EVENT_TABLE,
    EventRow,
    events_insert,
    events_insert_cte,
    events_insert_cte_params,
    json_text,
)
from core.middleware import request_id_var
from ledger import events as ev
from ledger import single_transfer
from ledger.applier import Applier, HoldRow
from ledger.commands import (
    MAX_HOLD_TIMEOUT,
    MAX_LEGS,
    TRANSFER_ID,
    Command,
    EntryRequest,
    HoldPostRequest,
    HoldRequest,
    HoldVoidRequest,
    LedgerResult,
    raise_for,
    rejected,
    validate,
)
from ledger.models import Account, Balance, Hold, Posting
from ledger.projection import BalanceState

__all__ = [
    "MAX_HOLD_TIMEOUT",
    "MAX_LEGS",
    "TRANSFER_ID",
    "Command",
    "EntryRequest",
    "HoldPostRequest",
    "HoldRequest",
    "HoldVoidRequest",
    "LedgerResult",
    "ledger_execute",
    "raise_for",
]

BALANCE_TABLE = Balance._meta.db_table
ACCOUNT_TABLE = Account._meta.db_table
POSTING_TABLE = Posting._meta.db_table
HOLD_TABLE = Hold._meta.db_table


# --- the batch --------------------------------------------------------------


def ledger_execute(
    commands: Sequence[Command], *, actor: str = "system", now: datetime | None = None
) -> list[LedgerResult]:
    """Apply a batch of ledger commands in one transaction; one result per command."""
    now = now or timezone.now()
    results: list[LedgerResult | None] = [None] * len(commands)
    valid: list[tuple[int, Command]] = []
    for index, command in enumerate(commands):
        problem = validate(command, now)
        if problem:
            results[index] = rejected("invalid", problem)
        else:
            valid.append((index, command))
    if valid:
        metadata = {"actor": actor}
        request_id = request_id_var.get()
        if request_id != "-":
            metadata["correlation_id"] = request_id
        index, command = valid[0]
        if len(valid) == 1 and isinstance(command, EntryRequest) and single_transfer.enabled():
            position = single_transfer.entry_post(
                transfer_id=command.transfer_id,
                currency=command.currency,
                kind=command.kind,
                description=command.description,
                legs=command.legs,
                metadata=metadata,
                now=now,
            )
            if position is not None:
                results[index] = LedgerResult(status="posted", position=position)
                return results  # type: ignore[return-value]
        # A batch's objects live until it returns: no cycle search meanwhile.
        with collector_paused():
            try:
                done = retry_transaction(_execute)(valid, metadata, now, look_up_entries=False)
            except _EntryIdTaken:
                done = retry_transaction(_execute)(valid, metadata, now, look_up_entries=True)
        for index, result in done:
            results[index] = result
    return results  # type: ignore[return-value]


class _EntryIdTaken(Exception):
    """A batch that did not look its entries' transfer ids up hit one already in
    the event store (the unique ``(stream_id, version)`` key refused the write):
    its transaction is rolled back and the batch runs again, looking them up.

    Why not look them up every time: a transfer id is new in all but a retry,
    and the event table's unique key checks every id as the events are written
    anyway. Reading them first as well cost a batch of a thousand entries a
    thousand probes of that index (a tenth of the batch's time in the database).
    A batch holding a replay pays for it instead: it is decided and written up
    to the duplicate, rolled back, and run again the old way, with the same
    answers ("replayed" with the first position, or "id_reused"). Not a
    ``RetryTransaction``: inside a caller's transaction that would hand the
    retry to the caller, who would run the same optimistic batch again; this
    is caught by ``ledger_execute`` itself, whose savepoint (or transaction)
    the failed attempt has already rolled back.
    """


def _in_list(values: Sequence) -> str:
    return ", ".join(["%s"] * len(values))


def _lock_balances(cursor, account_ids: Sequence[int]) -> dict[int, BalanceState]:
    if not account_ids:
        return {}
    lock = " FOR UPDATE OF b" if is_postgres() else ""
    cursor.execute(
        "SELECT b.account_id, a.currency, a.normal_side, a.overdraft_limit_micros, "
        "b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending, b.position "
        f"FROM {BALANCE_TABLE} b JOIN {ACCOUNT_TABLE} a ON a.id = b.account_id "
        f"WHERE b.account_id IN ({_in_list(account_ids)}) ORDER BY b.account_id{lock}",
        list(account_ids),
    )
    return {row[0]: BalanceState(*row) for row in cursor.fetchall()}


_HOLD_COLUMNS = (
    "id, hold_id, debit_account_id, credit_account_id, currency, amount_micros, "
    "posted_micros, state, expires_at, created_at, resolved_at"
)


def _read_holds(cursor, hold_ids: Sequence[str], *, lock: bool) -> dict[str, HoldRow]:
    if not hold_ids:
        return {}
    suffix = " ORDER BY id FOR UPDATE" if lock and is_postgres() else ""
    cursor.execute(
        f"SELECT {_HOLD_COLUMNS} FROM {HOLD_TABLE} WHERE hold_id IN ({_in_list(hold_ids)}){suffix}",
        list(hold_ids),
    )
    rows = {}
    for row in cursor.fetchall():
        hold = HoldRow(*row)
        if not is_postgres():  # SQLite hands back text for these
            hold.expires_at = as_utc(hold.expires_at)
            hold.created_at = as_utc(hold.created_at)
        rows[hold.hold_id] = hold
    return rows


def _existing_events(cursor, stream_ids: Sequence[str]) -> dict[tuple[str, int], tuple]:
    if not stream_ids:
        return {}
    cursor.execute(
        f"SELECT stream_id, version, type, payload, position FROM {EVENT_TABLE} "
        f"WHERE stream_id IN ({_in_list(stream_ids)})",
        list(stream_ids),
    )
    return {
        (stream_id, version): (event_type, _json(payload), position)
        for stream_id, version, event_type, payload, position in cursor.fetchall()
    }


def _execute(
    commands: list[tuple[int, Command]], metadata: dict, now: datetime, *, look_up_entries: bool
) -> list[tuple[int, LedgerResult]]:
    """One attempt at the batch. ``look_up_entries``: read which entries' transfer
    ids are already used before deciding (else the write's unique key finds them:
    ``_EntryIdTaken``). Holds' ids are always read: resolving one needs to know
    whether its resolution is already an event."""
    pg = is_postgres()
    with connection.cursor() as cursor:
        # Which holds and accounts this batch touches.
        hold_ids = sorted(
            {c.hold_id for _, c in commands if isinstance(c, HoldPostRequest | HoldVoidRequest)}
        )
        holds = _read_holds(cursor, hold_ids, lock=False)
        account_ids: set[int] = set()
        for _, command in commands:
            if isinstance(command, EntryRequest):
                account_ids.update(leg[0] for leg in command.legs)
            elif isinstance(command, HoldRequest):
                account_ids.update((command.debit_account_id, command.credit_account_id))
            elif isinstance(command, HoldPostRequest) and command.credit_legs:
                account_ids.update(leg[0] for leg in command.credit_legs)
        for hold in holds.values():
            account_ids.update((hold.debit_account, hold.credit_account))
        stream_ids = sorted(
            {
                ev.entry_stream_id(c.transfer_id)
                if isinstance(c, EntryRequest)
                else ev.hold_stream_id(c.hold_id)  # type: ignore[union-attr]
                for _, c in commands
                if look_up_entries or not isinstance(c, EntryRequest)
            }
        )

        if pg:
            balances, holds, existing = _read_locked_pg(sorted(account_ids), hold_ids, stream_ids)
        else:
            balances = _lock_balances(cursor, sorted(account_ids))
            holds = _read_holds(cursor, hold_ids, lock=True)
            existing = _existing_events(cursor, stream_ids)
        late = {a for h in holds.values() for a in (h.debit_account, h.credit_account)}
        if late - balances.keys():  # a hold created since the first read
            balances.update(_lock_balances(cursor, sorted(late - balances.keys())))

        applier = Applier(balances, holds, existing, now)
        done = [(index, applier.run(command)) for index, command in commands]
        if not applier.rows:
            return done
        try:
            positions = _write(cursor, applier, metadata, now, pg=pg)
        except IntegrityError as exc:
            if not look_up_entries and any(isinstance(c, EntryRequest) for _, c in commands):
                raise _EntryIdTaken from exc
            # A concurrent duplicate id committed after this read's snapshot: the
            # retry reads it and answers "replayed" (or refuses a different body).
            raise RetryTransaction("a transfer or hold id was written concurrently") from exc
    return [(index, _with_position(result, positions)) for index, result in done]


def _write(cursor, applier: Applier, metadata: dict, now: datetime, *, pg: bool) -> list[int]:
    if pg:
        return _write_pg(applier, metadata, now)
    positions = events_insert(
        [
            EventRow(
                stream_type=st,
                stream_id=sid,
                version=v,
                type=t,
                payload=p,
                metadata=metadata,
            )
            for st, sid, v, t, p in applier.rows
        ],
        recorded_at=now,
    )
    _write_generic(cursor, applier, positions, now)
    return positions


_PG_READ = f"""
WITH locked AS (
    SELECT b.account_id, a.currency, a.normal_side, a.overdraft_limit_micros,
           b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending, b.position
      FROM {BALANCE_TABLE} b JOIN {ACCOUNT_TABLE} a ON a.id = b.account_id
     WHERE b.account_id = ANY(%(accounts)s)
     ORDER BY b.account_id
       FOR UPDATE OF b
), held AS (
    SELECT {_HOLD_COLUMNS} FROM {HOLD_TABLE}
     WHERE hold_id = ANY(%(holds)s)
     ORDER BY id
       FOR UPDATE
)
SELECT (SELECT coalesce(json_agg(json_build_array(
                   account_id, currency, normal_side, overdraft_limit_micros, debits_posted,
                   credits_posted, debits_pending, credits_pending, position)), '[]')
          FROM locked),
       (SELECT coalesce(json_agg(json_build_array(
                   id, hold_id, debit_account_id, credit_account_id, currency, amount_micros,
                   posted_micros, state, expires_at, created_at, resolved_at)), '[]')
          FROM held),
       (SELECT coalesce(json_agg(json_build_array(stream_id, version, type, payload, position)),
                        '[]')
          FROM {EVENT_TABLE} WHERE stream_id = ANY(%(streams)s))
"""


def _read_locked_pg(
    account_ids: list[int], hold_ids: list[str], stream_ids: list[str]
) -> tuple[dict[int, BalanceState], dict[str, HoldRow], dict[tuple[str, int], tuple]]:
    """Lock balances (account order) and holds (id order) and read the ids already
    used, in one statement: one round trip.

    The locked rows come back as their newest versions, but the ids are read in
    the statement's snapshot, which may predate a writer this statement waited
    for. The applier notices what that can hide (a hold resolved by an event it
    cannot see) and a duplicate id hidden that way hits the unique key on write;
    both retry the transaction, which then sees everything.
    """
    with connection.wrap_database_errors:
        cursor = server_cursor()
        # Not prepared: a generic plan cannot know how many ids the arrays hold and
        # falls back to scanning the event table, which grows without bound.
        cursor.execute(
            _PG_READ,
            {"accounts": account_ids, "holds": hold_ids, "streams": stream_ids},
            prepare=False,
        )
        locked, held, used = (_json(value) for value in cursor.fetchone())
    balances = {row[0]: BalanceState(*row) for row in locked}
    holds = {}
    for row in held:
        hold = HoldRow(*row)
        hold.expires_at = as_utc(hold.expires_at)
        hold.created_at = as_utc(hold.created_at)
        holds[hold.hold_id] = hold
    existing = {
        (stream_id, version): (event_type, payload, position)
        for stream_id, version, event_type, payload, position in used
    }
    return balances, holds, existing


def _json(value):
    # Django's connections hand json back as text (SQLite, and jsonb on PostgreSQL).
    return json.loads(value) if isinstance(value, str) else value


def _last_event_per_account(applier: Applier) -> dict[int, int]:
    """Index (into applier.rows) of the newest event touching each account."""
    last: dict[int, int] = {}
    for index, (_, _, _, _, payload) in enumerate(applier.rows):
        for leg in payload.get("legs", ()):
            last[leg[0]] = index
        if "debit_account" in payload:
            last[payload["debit_account"]] = index
            last[payload["credit_account"]] = index
    return last


# The postings are the new events' legs, read from their payloads as inserted:
# ``[account, "D" | "C", amount]`` in the payload's currency (an event without
# legs has none).
_PG_WRITE = f"""
WITH ev AS ({events_insert_cte(returning="position, stream_id, version, payload")}),
po AS (
    INSERT INTO {POSTING_TABLE}
           (entry_position, account_id, currency, side, amount_micros, recorded_at)
    SELECT ev.position, (leg->>0)::bigint, ev.payload->>'currency', leg->>1,
           (leg->>2)::bigint, %(ev_recorded_at)s
      FROM ev CROSS JOIN LATERAL jsonb_array_elements(ev.payload->'legs') AS leg
),
ba AS (
    UPDATE {BALANCE_TABLE} b
       SET debits_posted = u.debits_posted, credits_posted = u.credits_posted,
           debits_pending = u.debits_pending, credits_pending = u.credits_pending,
           position = ev.position
      FROM json_to_recordset(%(balances)s::json)
           AS u(account_id bigint, debits_posted bigint, credits_posted bigint,
                debits_pending bigint, credits_pending bigint, stream_id text, version int)
      JOIN ev ON ev.stream_id = u.stream_id AND ev.version = u.version
     WHERE b.account_id = u.account_id
)
SELECT position FROM ev ORDER BY position
"""


def _write_pg(applier: Applier, metadata: dict, now: datetime) -> list[int]:
    """Holds, then events, postings and balances in one statement that takes the
    event store's append lock itself: from that lock to the commit (which
    serializes every appender) there is one round trip and the COMMIT."""
    rows = applier.rows
    params = events_insert_cte_params(
        [
            EventRow(stream_type=st, stream_id=sid, version=v, type=t, payload=p)
            for st, sid, v, t, p in rows
        ],
        recorded_at=now,
        metadata=metadata,
    )
    last = _last_event_per_account(applier)
    dirty = [s for s in applier.balances.values() if s.dirty]
    params["balances"] = json_text(
        [
            {
                "account_id": s.account_id,
                "debits_posted": s.debits_posted,
                "credits_posted": s.credits_posted,
                "debits_pending": s.debits_pending,
                "credits_pending": s.credits_pending,
                "stream_id": rows[last[s.account_id]][1],
                "version": rows[last[s.account_id]][2],
            }
            for s in dirty
        ]
    )
    with connection.wrap_database_errors:
        cursor = server_cursor()
        _write_holds(cursor, applier)
        cursor.execute(_PG_WRITE, params, prepare=True)
        positions = [row[0] for row in cursor.fetchall()]
    for state in dirty:
        state.position = positions[last[state.account_id]]
    return positions


def _write_holds(cursor, applier: Applier) -> None:
    new_holds = [h for h in applier.holds.values() if h.changed and h.pk is None]
    if new_holds:
        cursor.executemany(
            f"INSERT INTO {HOLD_TABLE} (hold_id, debit_account_id, credit_account_id, currency, "
            "amount_micros, posted_micros, state, expires_at, created_at, resolved_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    h.hold_id,
                    h.debit_account,
                    h.credit_account,
                    h.currency,
                    h.amount_micros,
                    h.posted_micros,
                    h.state,
                    h.expires_at,
                    h.created_at,
                    h.resolved_at,
                )
                for h in new_holds
            ],
        )
    changed_holds = [h for h in applier.holds.values() if h.changed and h.pk is not None]
    if changed_holds:
        cursor.executemany(
            f"UPDATE {HOLD_TABLE} SET state = %s, posted_micros = %s, resolved_at = %s "
            "WHERE id = %s AND state = 'pending'",
            [(h.state, h.posted_micros, h.resolved_at, h.pk) for h in changed_holds],
        )


def _with_position(result: LedgerResult, positions: list[int]) -> LedgerResult:
    # New events carry their row index as a negative placeholder until written.
    if result.position is not None and result.position < 0:
        return LedgerResult(status=result.status, position=positions[-result.position - 1])
    return result


def _write_generic(cursor, applier: Applier, positions: list[int], now: datetime) -> None:
    """The same writes as ``_write_pg``, statement by statement (SQLite)."""
    postings = [
        (position, account_id, payload["currency"], side, amount, now)
        for (_, _, _, _, payload), position in zip(applier.rows, positions, strict=True)
        for account_id, side, amount in payload.get("legs", ())
    ]
    if postings:
        cursor.executemany(
            f"INSERT INTO {POSTING_TABLE} (entry_position, account_id, currency, side, "
            "amount_micros, recorded_at) VALUES (%s, %s, %s, %s, %s, %s)",
            postings,
        )
    _write_holds(cursor, applier)
    last = _last_event_per_account(applier)
    dirty = [s for s in applier.balances.values() if s.dirty]
    for state in dirty:
        state.position = positions[last[state.account_id]]
    cursor.executemany(
        f"UPDATE {BALANCE_TABLE} SET debits_posted = %s, credits_posted = %s, "
        "debits_pending = %s, credits_pending = %s, position = %s WHERE account_id = %s",
        [(*s.counters(), s.account_id) for s in dirty],
    )
