"""Database helpers shared by every app: vendor checks and retrying a whole
transaction when the database says it lost a race."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from django.db import OperationalError, connection, models, transaction

P = ParamSpec("P")
R = TypeVar("R")

# SQLSTATEs meaning "run the transaction again": serialization failure, deadlock.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def server_cursor():
    """A server-side-binding psycopg cursor on Django's (PostgreSQL) connection.

    Django's own cursors quote parameters into the SQL text. Here they travel
    apart from it (a large JSON document of rows included) and a statement can be
    prepared once per connection with ``prepare=True``, for statements whose
    planning costs more than running them. (PgBouncer in transaction mode handles
    prepared statements from version 1.21.) Wrap its use in
    ``connection.wrap_database_errors`` to get Django's exception classes."""
    import psycopg

    # As Django's own cursors do: a persistent connection is checked once per request
    # (CONN_HEALTH_CHECKS), so a restarted database fails no request.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _is_retryable(exc: BaseException) -> bool:
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(exc, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    # SQLite answers "database is locked" when its busy timeout runs out.
    return connection.vendor == "sqlite" and "locked" in str(exc)


class RetryTransaction(Exception):
    """Raised inside a transaction to say "roll back and run it again from a fresh
    read". Every ``retry_transaction`` retries it, however deeply it was raised,
    so a write nested in a caller's transaction is retried by that caller."""


def retry_transaction(
    func: Callable[P, R] | None = None,
    *,
    attempts: int = 8,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Callable[P, R]:
    """Run ``func`` in ``transaction.atomic()``; on a serialization failure, a
    deadlock, ``RetryTransaction`` (or one of ``retry_on``) roll back and run the
    whole block again from a fresh read, with jittered backoff."""

    retryable: tuple[type[BaseException], ...] = (RetryTransaction, *retry_on)

    def decorate(inner: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(inner)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if transaction.get_connection().in_atomic_block:
                # Part of a bigger transaction: the outermost caller owns the retry.
                with transaction.atomic():
                    return inner(*args, **kwargs)
            for attempt in range(attempts):
                try:
                    with transaction.atomic():
                        return inner(*args, **kwargs)
                except OperationalError as exc:
                    if not _is_retryable(exc) or attempt == attempts - 1:
                        raise
                except retryable:
                    if attempt == attempts - 1:
                        raise
                time.sleep(random.uniform(0, 0.002 * 2**attempt))
            raise AssertionError("unreachable")

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate  # type: ignore[return-value]


def as_utc(value: datetime | str) -> datetime:
    """A timestamp read through a raw cursor, as an aware UTC datetime: raw cursors
    skip Django's converters, so SQLite hands back naive values (UTC, as Django stored
    them) or text, where PostgreSQL gives aware datetimes."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def copy_statement(model: type[models.Model], columns: Sequence[str]) -> str:
    """``COPY <model's table> (<columns>) FROM STDIN``, for ``server_cursor().copy``:
    many rows in one stream, with no model instance per row."""
    quoted = ", ".join(connection.ops.quote_name(column) for column in columns)
    return f"COPY {model._meta.db_table} ({quoted}) FROM STDIN"
