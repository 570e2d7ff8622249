"""Writes to the ledger.

Everything funnels into ``ledger_execute``: a batch of commands (journal
entries, hold create / post / void) applied in one transaction, TigerBeetle
style, with one result per command. Inside it:

1. the balance rows of every account involved are locked, in account order
   (``SELECT … ORDER BY account_id FOR UPDATE``), so concurrent batches queue
   instead of deadlocking, then the holds involved, in id order;
2. transfer and hold ids already in the event store are looked up: the same id
   with the same body is a replay (the first result, no effect), with a
   different body it is refused;
3. commands are applied in order to the in-memory balances with
   ``ledger.projection.apply_event`` — the same function a replay uses — and a
   command that would break an account's limit is rejected alone;
4. the events, postings, holds and new balances are written (COPY on PostgreSQL).

The whole block is retried from a fresh read on a serialization failure,
a deadlock, or a unique-key race with a concurrent duplicate.

On PostgreSQL a lone journal entry is first offered to ``ledger.single_transfer``
(one round trip, the same rule); what it does not post comes here.

Why one module of ~900 lines: the four steps share one in-memory state (the
``_Applier``: locked balances, holds, results, rows to write) and one invariant —
what is written is exactly what ``apply_event`` decided. The PostgreSQL read and
write statements are shaped by the applier's rows and nothing else uses them;
splitting them out would put the invariant's two halves in different files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError, connection
from django.utils import timezone

from core.db import RetryTransaction, as_utc, is_postgres, retry_transaction, server_cursor
from core.errors import (
    ApplicationError,
    Conflict,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
)
from core.eventstore import (
    EVENT_TABLE,
    EVENTS_INSERT_CTE,
    EventRow,
    events_insert,
    events_insert_cte_params,
    json_text,
)
from core.middleware import request_id_var
from core.money import CURRENCIES, MAX_AMOUNT_MICROS
from ledger import events as ev
from ledger import single_transfer
from ledger.models import Account, Balance, Hold, Posting
from ledger.projection import BalanceState, apply_event

TRANSFER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._/@+-]{0,199}$")
MAX_HOLD_TIMEOUT = timedelta(days=366)
MAX_LEGS = 64
BALANCE_TABLE = Balance._meta.db_table
ACCOUNT_TABLE = Account._meta.db_table
POSTING_TABLE = Posting._meta.db_table
HOLD_TABLE = Hold._meta.db_table


# --- commands and results ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryRequest:
    """A journal entry: two or more legs ``(account_id, "D"|"C", amount_micros)``
    whose debits equal their credits, all in ``currency``."""

    transfer_id: str
    currency: str
    legs: tuple[ev.Leg, ...]
    kind: str = "transfer"
    description: str = ""


@dataclass(frozen=True, slots=True)
class HoldRequest:
    hold_id: str
    debit_account_id: int
    credit_account_id: int
    amount_micros: int
    currency: str
    expires_at: datetime
    description: str = ""


@dataclass(frozen=True, slots=True)
class HoldPostRequest:
    hold_id: str
    amount_micros: int | None = None  # None: the whole held amount
    # Where the posted amount goes, as ``(account_id, amount_micros)`` credit legs
    # summing to it; None: all to the hold's credit account. Lets one journal entry
    # pay a provider and the platform fee out of a buyer's hold.
    credit_legs: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class HoldVoidRequest:
    hold_id: str
    expired: bool = False  # set by the expiry sweep


Command = EntryRequest | HoldRequest | HoldPostRequest | HoldVoidRequest


@dataclass(frozen=True, slots=True)
class LedgerResult:
    status: str  # "posted" | "replayed" | "rejected"
    position: int | None = None
    code: str = ""
    message: str = ""
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


_ERRORS: dict[str, type[ApplicationError]] = {
    "invalid": InvalidInput,
    "account_not_found": NotFound,
    "hold_not_found": NotFound,
    "exceeds_limit": InsufficientFunds,
    "id_reused": IdempotencyConflict,
    "hold_resolved": Conflict,
    "hold_expired": Conflict,
}


def raise_for(result: LedgerResult) -> LedgerResult:
    """Turn a rejected result into its ApplicationError; pass others through."""
    if result.ok:
        return result
    raise _ERRORS.get(result.code, ApplicationError)(result.message, details=result.details)


def _rejected(code: str, message: str, **details) -> LedgerResult:
    return LedgerResult(status="rejected", code=code, message=message, details=details)


# --- static validation (no database) ----------------------------------------


def _check_amount(value: object, name: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be an integer number of micro-units"
    if value <= 0:
        return f"{name} must be positive"
    if value > MAX_AMOUNT_MICROS:
        return f"{name} must be at most {MAX_AMOUNT_MICROS}"
    return None


def _check_id(value: object, name: str) -> str | None:
    if not isinstance(value, str) or not TRANSFER_ID.match(value):
        return (
            f"{name} must be 1-200 characters of letters, digits and :._/@+- "
            "starting with a letter or digit"
        )
    return None


def _check_credit_legs(command: HoldPostRequest) -> str | None:
    legs = command.credit_legs or ()
    if not 1 <= len(legs) < MAX_LEGS:
        return f"credit_legs must have 1 to {MAX_LEGS - 1} legs"
    seen = set()
    for index, leg in enumerate(legs):
        if not isinstance(leg, tuple | list) or len(leg) != 2:
            return f"credit_legs[{index}] must be (account_id, amount_micros)"
        account_id, amount = leg
        if isinstance(account_id, bool) or not isinstance(account_id, int) or account_id in seen:
            return f"credit_legs[{index}].account must be an account id, once"
        seen.add(account_id)
        if problem := _check_amount(amount, f"credit_legs[{index}].amount_micros"):
            return problem
    total = sum(leg[1] for leg in legs)
    if command.amount_micros is not None and total != command.amount_micros:
        return f"credit_legs sum to {total}, not amount_micros {command.amount_micros}"
    return None


def _validate(command: Command, now: datetime) -> str | None:
    if isinstance(command, EntryRequest):
        if problem := _check_id(command.transfer_id, "transfer_id"):
            return problem
        if command.currency not in CURRENCIES:
            return f"currency {command.currency!r} is not one of {', '.join(CURRENCIES)}"
        if not 2 <= len(command.legs) <= MAX_LEGS:
            return f"an entry needs 2 to {MAX_LEGS} legs"
        debits = credits = 0
        seen = set()
        for index, leg in enumerate(command.legs):
            if not isinstance(leg, tuple | list) or len(leg) != 3:
                return f"legs[{index}] must be (account_id, side, amount_micros)"
            account_id, side, amount = leg
            if isinstance(account_id, bool) or not isinstance(account_id, int):
                return f"legs[{index}].account must be an account id"
            if account_id in seen:
                return f"legs[{index}]: account {account_id} appears twice in one entry"
            seen.add(account_id)
            if side not in ("D", "C"):
                return f"legs[{index}].side must be 'D' or 'C'"
            if problem := _check_amount(amount, f"legs[{index}].amount_micros"):
                return problem
            if side == "D":
                debits += amount
            else:
                credits += amount
        if debits != credits:
            return f"debits ({debits}) must equal credits ({credits})"
        return None
    if isinstance(command, HoldRequest):
        if problem := _check_id(command.hold_id, "hold_id"):
            return problem
        if command.currency not in CURRENCIES:
            return f"currency {command.currency!r} is not one of {', '.join(CURRENCIES)}"
        if command.debit_account_id == command.credit_account_id:
            return "a hold needs two different accounts"
        if problem := _check_amount(command.amount_micros, "amount_micros"):
            return problem
        if command.expires_at.tzinfo is None:
            return "expires_at must be timezone-aware"
        if not now < command.expires_at <= now + MAX_HOLD_TIMEOUT:
            return "expires_at must be in the future and at most 366 days away"
        return None
    if isinstance(command, HoldPostRequest):
        if problem := _check_id(command.hold_id, "hold_id"):
            return problem
        if command.amount_micros is not None and (
            problem := _check_amount(command.amount_micros, "amount_micros")
        ):
            return problem
        if command.credit_legs is not None:
            return _check_credit_legs(command)
        return None
    if isinstance(command, HoldVoidRequest):
        return _check_id(command.hold_id, "hold_id")
    return f"not a ledger command: {type(command).__name__}"


# --- the batch --------------------------------------------------------------


@dataclass(slots=True)
class _HoldRow:
    pk: int | None
    hold_id: str
    debit_account: int
    credit_account: int
    currency: str
    amount_micros: int
    posted_micros: int
    state: str
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None = None
    changed: bool = False


def ledger_execute(
    commands: Sequence[Command], *, actor: str = "system", now: datetime | None = None
) -> list[LedgerResult]:
    """Apply a batch of ledger commands in one transaction; one result per command."""
    now = now or timezone.now()
    results: list[LedgerResult | None] = [None] * len(commands)
    valid: list[tuple[int, Command]] = []
    for index, command in enumerate(commands):
        problem = _validate(command, now)
        if problem:
            results[index] = _rejected("invalid", problem)
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
        done = retry_transaction(_execute)(valid, metadata, now)
        for index, result in done:
            results[index] = result
    return results  # type: ignore[return-value]


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


def _read_holds(cursor, hold_ids: Sequence[str], *, lock: bool) -> dict[str, _HoldRow]:
    if not hold_ids:
        return {}
    suffix = " ORDER BY id FOR UPDATE" if lock and is_postgres() else ""
    cursor.execute(
        f"SELECT {_HOLD_COLUMNS} FROM {HOLD_TABLE} WHERE hold_id IN ({_in_list(hold_ids)}){suffix}",
        list(hold_ids),
    )
    rows = {}
    for row in cursor.fetchall():
        hold = _HoldRow(*row)
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
    commands: list[tuple[int, Command]], metadata: dict, now: datetime
) -> list[tuple[int, LedgerResult]]:
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

        applier = _Applier(balances, holds, existing, now)
        done = [(index, applier.run(command)) for index, command in commands]
        if not applier.rows:
            return done
        try:
            positions = _write(cursor, applier, metadata, now, pg=pg)
        except IntegrityError as exc:
            # A concurrent duplicate id committed after this read's snapshot: the
            # retry reads it and answers "replayed" (or refuses a different body).
            raise RetryTransaction("a transfer or hold id was written concurrently") from exc
    return [(index, _with_position(result, positions)) for index, result in done]


def _write(cursor, applier: _Applier, metadata: dict, now: datetime, *, pg: bool) -> list[int]:
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


class _StaleSnapshot(RetryTransaction):
    """The one-statement read saw a lock released by a writer that committed after
    the statement's snapshot was taken: run the transaction again."""


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
) -> tuple[dict[int, BalanceState], dict[str, _HoldRow], dict[tuple[str, int], tuple]]:
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
        hold = _HoldRow(*row)
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


def _last_event_per_account(applier: _Applier) -> dict[int, int]:
    """Index (into applier.rows) of the newest event touching each account."""
    last: dict[int, int] = {}
    for index, (_, _, _, _, payload) in enumerate(applier.rows):
        for leg in payload.get("legs", ()):
            last[leg[0]] = index
        if "debit_account" in payload:
            last[payload["debit_account"]] = index
            last[payload["credit_account"]] = index
    return last


_PG_WRITE = f"""
WITH ev AS ({EVENTS_INSERT_CTE}),
po AS (
    INSERT INTO {POSTING_TABLE}
           (entry_position, account_id, currency, side, amount_micros, recorded_at)
    SELECT ev.position, p.account_id, p.currency, p.side, p.amount_micros, %(ev_recorded_at)s
      FROM json_to_recordset(%(postings)s::json)
           AS p(stream_id text, version int, account_id bigint, currency text, side text,
                amount_micros bigint)
      JOIN ev ON ev.stream_id = p.stream_id AND ev.version = p.version
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


def _write_pg(applier: _Applier, metadata: dict, now: datetime) -> list[int]:
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
    params["postings"] = json_text(
        [
            {
                "stream_id": stream_id,
                "version": version,
                "account_id": leg[0],
                "currency": payload["currency"],
                "side": leg[1],
                "amount_micros": leg[2],
            }
            for _, stream_id, version, _, payload in rows
            for leg in payload.get("legs", ())
        ]
    )
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


def _write_holds(cursor, applier: _Applier) -> None:
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


class _Applier:
    """Applies commands in order to in-memory balances and holds, collecting the
    event rows to write. Holds no database handle: it only decides."""

    def __init__(self, balances, holds, existing, now: datetime) -> None:
        self.balances: dict[int, BalanceState] = balances
        self.holds: dict[str, _HoldRow] = holds
        self.existing: dict[tuple[str, int], tuple] = existing
        self.now = now
        self.rows: list[tuple[str, str, int, str, dict]] = []

    def _record(
        self, stream_type: str, stream_id: str, version: int, event_type: str, payload: dict
    ) -> LedgerResult:
        self.rows.append((stream_type, stream_id, version, event_type, payload))
        placeholder = -len(self.rows)
        self.existing[(stream_id, version)] = (event_type, payload, placeholder)
        return LedgerResult(status="posted", position=placeholder)

    def _accounts(self, ids: Sequence[int], currency: str) -> LedgerResult | None:
        for account_id in ids:
            state = self.balances.get(account_id)
            if state is None:
                return _rejected(
                    "account_not_found",
                    f"account {account_id} does not exist",
                    account=account_id,
                )
            if state.currency != currency:
                return _rejected(
                    "invalid",
                    f"account {account_id} is kept in {state.currency}, not {currency}",
                    account=account_id,
                )
        return None

    def _apply_checked(
        self, event_type: str, payload: dict, ids: Sequence[int]
    ) -> LedgerResult | None:
        """Apply to the balances; undo and reject if any account breaks its limit."""
        touched = [self.balances[i] for i in ids]
        before = [(s.available, s.counters(), s.dirty) for s in touched]
        apply_event(self.balances, event_type, payload, 0)
        for state, (available, _counters, _dirty) in zip(touched, before, strict=True):
            if state.breaks_limit(available):
                after = state.available
                missing = -(after + (state.overdraft_limit_micros or 0))
                for undo, (_, saved, was_dirty) in zip(touched, before, strict=True):
                    (
                        undo.debits_posted,
                        undo.credits_posted,
                        undo.debits_pending,
                        undo.credits_pending,
                        undo.position,
                    ) = saved
                    undo.dirty = was_dirty
                return _rejected(
                    "exceeds_limit",
                    f"account {state.account_id} has {available} micro-units available; "
                    f"this needs {available - after} ({missing} missing)",
                    account=state.account_id,
                    available_micros=available,
                    missing_micros=missing,
                )
        return None

    def run(self, command: Command) -> LedgerResult:
        if isinstance(command, EntryRequest):
            return self._entry(command)
        if isinstance(command, HoldRequest):
            return self._hold_create(command)
        if isinstance(command, HoldPostRequest):
            return self._hold_resolve(
                command.hold_id, ev.HOLD_POSTED, command.amount_micros, command.credit_legs
            )
        return self._hold_resolve(
            command.hold_id, ev.HOLD_EXPIRED if command.expired else ev.HOLD_VOIDED, None
        )

    def _entry(self, c: EntryRequest) -> LedgerResult:
        stream_id = ev.entry_stream_id(c.transfer_id)
        legs = [[leg[0], leg[1], leg[2]] for leg in c.legs]
        payload = ev.EntryPosted(
            transfer_id=c.transfer_id,
            currency=c.currency,
            kind=c.kind,
            description=c.description,
            legs=tuple(c.legs),
        ).payload()
        payload["legs"] = legs
        first = self.existing.get((stream_id, 1))
        if first is not None:
            _, stored, position = first
            same = (stored["currency"], stored["kind"], stored["legs"], stored["description"]) == (
                c.currency,
                c.kind,
                legs,
                c.description,
            )
            if same:
                return LedgerResult(status="replayed", position=position)
            return _rejected(
                "id_reused",
                f"transfer {c.transfer_id!r} exists with a different body",
                transfer_id=c.transfer_id,
            )
        ids = [int(leg[0]) for leg in c.legs]
        if problem := self._accounts(ids, c.currency):
            return problem
        if problem := self._apply_checked(ev.ENTRY_POSTED, payload, ids):
            return problem
        return self._record(ev.ENTRY_STREAM, stream_id, 1, ev.ENTRY_POSTED, payload)

    def _hold_create(self, c: HoldRequest) -> LedgerResult:
        stream_id = ev.hold_stream_id(c.hold_id)
        payload = ev.HoldCreated(
            hold_id=c.hold_id,
            currency=c.currency,
            debit_account=c.debit_account_id,
            credit_account=c.credit_account_id,
            amount_micros=c.amount_micros,
            expires_at=c.expires_at.isoformat(),
            description=c.description,
        ).payload()
        first = self.existing.get((stream_id, 1))
        if first is not None:
            _, stored, position = first
            keys = ("currency", "debit_account", "credit_account", "amount_micros")
            if all(stored[k] == payload[k] for k in keys):
                return LedgerResult(status="replayed", position=position)
            return _rejected(
                "id_reused",
                f"hold {c.hold_id!r} exists with a different body",
                hold_id=c.hold_id,
            )
        ids = [c.debit_account_id, c.credit_account_id]
        if problem := self._accounts(ids, c.currency):
            return problem
        if problem := self._apply_checked(ev.HOLD_CREATED, payload, ids):
            return problem
        self.holds[c.hold_id] = _HoldRow(
            pk=None,
            hold_id=c.hold_id,
            debit_account=c.debit_account_id,
            credit_account=c.credit_account_id,
            currency=c.currency,
            amount_micros=c.amount_micros,
            posted_micros=0,
            state=Hold.State.PENDING,
            expires_at=c.expires_at,
            created_at=self.now,
            changed=True,
        )
        return self._record(ev.HOLD_STREAM, stream_id, 1, ev.HOLD_CREATED, payload)

    def _hold_resolve(
        self,
        hold_id: str,
        event_type: str,
        amount: int | None,
        credit_legs: tuple[tuple[int, int], ...] | None = None,
    ) -> LedgerResult:
        stream_id = ev.hold_stream_id(hold_id)
        hold = self.holds.get(hold_id)
        if hold is None:
            return _rejected("hold_not_found", f"hold {hold_id!r} does not exist", hold_id=hold_id)
        resolved = self.existing.get((stream_id, 2))
        if resolved is None and hold.state != Hold.State.PENDING:
            raise _StaleSnapshot(hold_id)
        if resolved is not None or hold.state != Hold.State.PENDING:
            if resolved is not None:
                stored_type, stored, position = resolved
                posted = sum(leg[2] for leg in stored["legs"] if leg[1] == "D")
                wanted = hold.amount_micros if amount is None else amount
                if credit_legs is not None:
                    wanted = sum(leg[1] for leg in credit_legs)
                    credited = sorted((leg[0], leg[2]) for leg in stored["legs"] if leg[1] == "C")
                    if credited != sorted(tuple(leg) for leg in credit_legs):
                        wanted = -1  # the same hold posted to other accounts: not a replay
                if stored_type == event_type and (event_type != ev.HOLD_POSTED or posted == wanted):
                    return LedgerResult(status="replayed", position=position)
            return _rejected(
                "hold_resolved",
                f"hold {hold_id!r} is already {hold.state}",
                hold_id=hold_id,
                state=hold.state,
            )
        if event_type == ev.HOLD_POSTED:
            if hold.expires_at <= self.now:
                return _rejected(
                    "hold_expired",
                    f"hold {hold_id!r} expired at {hold.expires_at.isoformat()}",
                    hold_id=hold_id,
                )
            if credit_legs is not None:
                amount = sum(leg[1] for leg in credit_legs)
            amount = hold.amount_micros if amount is None else amount
            if amount > hold.amount_micros:
                return _rejected(
                    "invalid",
                    f"amount_micros {amount} is more than the {hold.amount_micros} held",
                    hold_id=hold_id,
                )
            parts = credit_legs or ((hold.credit_account, amount),)
            if hold.debit_account in {leg[0] for leg in parts}:
                return _rejected(
                    "invalid",
                    "credit_legs may not credit the hold's debit account",
                    hold_id=hold_id,
                )
            if problem := self._accounts([leg[0] for leg in parts], hold.currency):
                return problem
            legs: tuple[ev.Leg, ...] = (
                (hold.debit_account, "D", amount),
                *((account_id, "C", part) for account_id, part in parts),
            )
        else:
            amount = 0
            legs = ()
        payload = ev.HoldResolved(
            resolution=event_type,
            hold_id=hold_id,
            currency=hold.currency,
            debit_account=hold.debit_account,
            credit_account=hold.credit_account,
            released_micros=hold.amount_micros,
            legs=legs,
        ).payload()
        # Posting at most the held amount never lowers availability: no limit check.
        apply_event(self.balances, event_type, payload, 0)
        hold.state = {
            ev.HOLD_POSTED: Hold.State.POSTED,
            ev.HOLD_VOIDED: Hold.State.VOIDED,
            ev.HOLD_EXPIRED: Hold.State.EXPIRED,
        }[event_type]
        hold.posted_micros = amount
        hold.resolved_at = self.now
        hold.changed = True
        return self._record(ev.HOLD_STREAM, stream_id, 2, event_type, payload)


def _write_generic(cursor, applier: _Applier, positions: list[int], now: datetime) -> None:
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
