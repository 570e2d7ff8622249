"""The usage detail of one buyer and month: possibly millions of rows, read through
a server-side cursor and written in chunks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
from django.conf import settings
from django.db import connection

from exports.frames import CHUNK_ROWS, Column, _money_columns, frame
from invoicing.services import PRODUCT_OF
from metering.models import UsageEvent
from pricing.selectors import rate_for
from pricing.services import rate_usage

# --- usage detail ---------------------------------------------------------------------

USAGE_DIMENSIONS = ("model", "training_type", "gpu_model", "region", "node")
USAGE_DETAIL_COLUMNS = [
    Column("usage_id", "int"),
    Column("source", "text"),
    Column("event_id", "text"),
    Column("occurred_at", "time"),
    Column("recorded_at", "time"),
    Column("period", "date"),
    Column("type", "text"),
    Column("product", "text"),
    Column("subject_kind", "text"),
    Column("subject_id", "text"),
    Column("quantity", "int"),
    *[Column(name, "text") for name in USAGE_DIMENSIONS],
    Column("provider_id", "int?"),
    Column("rate_micros", "int"),
    Column("rate_unit", "int"),
    Column("fee_bps", "int"),
    Column("currency", "text"),
    *_money_columns("amount", "provider_share", "fee"),
    Column("note", "text"),
]
_USAGE_SQL = (
    "SELECT id, source, event_id, occurred_at, recorded_at, period, type, subject_kind, "
    "subject_id, quantity, dimensions, note FROM {table} "
    "WHERE buyer_id = %s AND period = %s ORDER BY id"
)


def usage_detail_count(*, organization_id: int, period: date) -> int:
    return UsageEvent.objects.filter(buyer_id=organization_id, period=period).count()


def _stream_rows(sql: str, params: list[Any], size: int) -> Iterator[list[tuple]]:
    """Rows of ``sql`` in lists of ``size``. On PostgreSQL through a server-side
    cursor declared WITH HOLD: the result stays on the server and comes over in
    pieces, and outside a transaction each piece is fetched on its own, so the
    progress written between pieces is seen by others at once."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            while batch := cursor.fetchmany(size):
                yield batch
        return
    connection.ensure_connection()
    raw = connection.connection
    with (
        connection.wrap_database_errors,
        raw.cursor(name=f"export_{uuid.uuid4().hex}", withhold=True) as cursor,
    ):
        cursor.itersize = size
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(size):
            yield batch


def usage_detail_chunks(
    *, organization_id: int, period: date, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """Every usage event of one buyer counted in one month, each rated alone at the
    price in force when it happened (the ledger's amounts, before they were summed
    into journal entries)."""
    currency = settings.TANDEM_CURRENCY
    sql = _USAGE_SQL.format(table=UsageEvent._meta.db_table)
    for batch in _stream_rows(sql, [organization_id, period], chunk_rows):
        records = []
        for (
            usage_id,
            source,
            event_id,
            occurred_at,
            recorded_at,
            row_period,
            usage_type,
            subject_kind,
            subject_id,
            quantity,
            dimensions,
            note,
        ) in batch:
            dims = _dimensions(dimensions)
            occurred = _as_datetime(occurred_at)
            rate = rate_for(usage_type, dims, occurred)
            rated = rate_usage(
                usage_type=usage_type, quantity=quantity, dimensions=dims, at=occurred
            )
            records.append(
                {
                    "usage_id": usage_id,
                    "source": source,
                    "event_id": event_id,
                    "occurred_at": occurred,
                    "recorded_at": _as_datetime(recorded_at),
                    "period": row_period
                    if isinstance(row_period, date)
                    else date.fromisoformat(row_period),
                    "type": usage_type,
                    "product": PRODUCT_OF.get(usage_type, "other"),
                    "subject_kind": subject_kind,
                    "subject_id": subject_id,
                    "quantity": quantity,
                    **{name: str(dims.get(name, "")) for name in USAGE_DIMENSIONS},
                    "provider_id": rated.provider_id,
                    "rate_micros": rate.rate_micros,
                    "rate_unit": rate.unit,
                    "fee_bps": rate.fee_bps if usage_type == "gpu.seconds" else 0,
                    "currency": currency,
                    "amount_micros": rated.amount_micros,
                    "provider_share_micros": rated.provider_micros,
                    "fee_micros": rated.fee_micros,
                    "note": note,
                }
            )
        yield frame(USAGE_DETAIL_COLUMNS, records)


def _dimensions(value: Any) -> dict[str, Any]:
    import json

    dims = json.loads(value) if isinstance(value, str | bytes) else dict(value or {})
    for name in ("provider", "lease_price_micros_per_hour"):
        if dims.get(name) is not None:
            dims[name] = int(dims[name])
    return dims


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
