"""One journal entry in one round trip to PostgreSQL.

Why it exists: a transfer sent alone (one ``EntryRequest`` per ``ledger_execute``,
as an API request or a payment sends it) costs the plain engine a BEGIN, a
statement to lock and read, a statement to write, and a COMMIT, with the event
store's append lock (migration core 0003) held from the write to the commit,
across a client round trip. That made it a third of a raw INSERT of the same
rows. Here the whole entry is one call of ``billing_single_transfer`` (migration
ledger 0002), sent outside any transaction, so the statement is the transaction:
one round trip, and the append lock is held only while the server works.

Which rule it must equal: the plain engine's (``ledger.engine._execute``, whose
``ledger.applier.Applier`` applies ``ledger.projection.apply_event`` and
``BalanceState.breaks_limit``). The function posts only when that engine would
post, with the same event (type, payload, stream id, version 1, metadata), the
same postings and the same balance counters and position. Whenever it would not
(a transfer id already used, an unknown account, another currency, a limit
broken) the function writes nothing and the plain engine runs instead, so every
replay and rejection is that engine's own answer. A concurrent duplicate id
(the unique key) or a deadlock also falls back to the plain engine, which
retries. ``tests/ledger/test_single_transfer.py`` holds the two to the same
results.

SQLite, and a batch of more than one command, or a hold command, take the plain
engine only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

from django.db import IntegrityError, OperationalError, connection, transaction

from core.db import is_postgres, server_cursor
from core.eventstore import json_text
from ledger import events as ev

# The legs travel in the payload (JSON text): no arrays to adapt, one document.
_CALL = "SELECT billing_single_transfer(%s, %s, %s, %s::jsonb, %s::jsonb, %s)"
# SQLSTATEs after which the plain engine, with its retries, takes over.
_FALL_BACK_SQLSTATES = {"40001", "40P01"}

_enabled: ContextVar[bool] = ContextVar("single_transfer_enabled", default=True)


@contextmanager
def plain_engine_only() -> Iterator[None]:
    """Within this block every command takes the plain engine (tests and the
    benchmark compare the two)."""
    token = _enabled.set(False)
    try:
        yield
    finally:
        _enabled.reset(token)


def enabled() -> bool:
    """Whether a lone journal entry takes this path here (PostgreSQL, not in a
    ``plain_engine_only`` block)."""
    return is_postgres() and _enabled.get()


def entry_post(
    *,
    transfer_id: str,
    currency: str,
    kind: str,
    description: str,
    legs: Sequence[ev.Leg],
    metadata: dict,
    now: datetime,
) -> int | None:
    """Post one validated journal entry in one call and return its event's
    position; None when the plain engine must answer instead (see above)."""
    payload = ev.EntryPosted(
        transfer_id=transfer_id,
        currency=currency,
        kind=kind,
        description=description,
        legs=tuple(legs),
    ).payload()
    params = (
        ev.ENTRY_STREAM,
        ev.entry_stream_id(transfer_id),
        ev.ENTRY_POSTED,
        json_text(payload),
        json_text(metadata),
        now,
    )
    try:
        if connection.in_atomic_block or not connection.get_autocommit():
            # Part of a caller's transaction: a savepoint keeps that transaction
            # usable if this statement fails, and the caller's commit decides.
            with transaction.atomic():
                position = _call(params)
        else:
            position = _call(params)
    except IntegrityError:
        return None  # a concurrent duplicate id: the plain engine reads it
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) in _FALL_BACK_SQLSTATES:
            return None
        raise
    return position


def _call(params: tuple) -> int | None:
    with connection.wrap_database_errors:
        cursor = server_cursor()
        cursor.execute(_CALL, params, prepare=True)
        row = cursor.fetchone()
    return row[0] if row else None
