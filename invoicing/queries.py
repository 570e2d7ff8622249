"""SQL helpers of invoicing's batched reads: a list of values as one array
parameter (``_any``), a raw select, and chunks of a long list."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connection

from core.db import is_postgres, server_cursor


def _chunks(values: list, size: int = 5000) -> Iterable[list]:
    """Slices small enough for an IN list on every database (SQLite caps parameters)."""
    for offset in range(0, len(values), size):
        yield values[offset : offset + size]


def _any(values: list[Any]) -> tuple[str, list[Any]]:
    """``= ANY(%s)`` with the list as one array parameter on PostgreSQL (bound
    server-side, however long: a Django IN list of thousands of ids costs more to
    build than the query to run); an IN list elsewhere."""
    if not values:
        return "IN (NULL)", []  # matches nothing
    if is_postgres():
        # Spelled as an array literal here: psycopg adapts a list element by element,
        # five times slower for the tens of thousands of ids a close passes.
        if all(type(v) is int for v in values):
            return "= ANY(%s::bigint[])", ["{" + ",".join(map(str, values)) + "}"]
        if all(type(v) is str for v in values):
            quoted = ",".join(
                '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values
            )
            return "= ANY(%s::text[])", ["{" + quoted + "}"]
        return "= ANY(%s)", [values]
    return f"IN ({', '.join(['%s'] * len(values))})", list(values)


def _select(sql: str, params: list[Any]) -> list[tuple]:
    """The rows of a query written with ``_any``'s fragments."""
    if is_postgres():
        with connection.wrap_database_errors:
            cursor = server_cursor()
            cursor.execute(sql, params)
            return cursor.fetchall()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
