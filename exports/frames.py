"""The shape every finance export shares: typed columns (so every chunk and every
format has the same schema), an ``ExportSource`` (columns, row count when known,
DataFrame chunks), money as integer micro-units beside exact decimal text, and the
chunk size of the streamed exports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pandas as pd

from core.money import Money

CHUNK_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: str  # "int" | "int?" (nullable) | "text" | "time" | "date"


@dataclass(slots=True)
class ExportSource:
    columns: list[Column]
    chunks: Iterator[pd.DataFrame]
    total: int | None


def _money_columns(*names: str) -> list[Column]:
    """``<name>_micros`` (integer) and ``<name>`` (decimal text) for each name."""
    out = []
    for name in names:
        out += [Column(f"{name}_micros", "int"), Column(name, "text")]
    return out


def frame(columns: list[Column], records: list[dict[str, Any]]) -> pd.DataFrame:
    """A DataFrame of ``records`` with exactly ``columns``, typed; the decimal text
    of every ``<name>_micros`` column filled in from the row's ``currency``."""
    names = [c.name for c in columns]
    texts = [(c.name, c.name[:-7]) for c in columns if c.name.endswith("_micros")]
    texts = [(micros, text) for micros, text in texts if text in names]
    for record in records:
        for micros, text in texts:
            record.setdefault(text, Money(record[micros], record["currency"]).format())
    if records:
        df = pd.DataFrame.from_records(records, columns=names)
    else:
        df = pd.DataFrame({name: [] for name in names})
    for column in columns:
        series = df[column.name]
        if column.kind == "int":
            df[column.name] = series.astype("int64")
        elif column.kind == "int?":
            df[column.name] = series.astype("Int64")
        elif column.kind == "text":
            df[column.name] = series.where(series.notna(), "").astype("str")
        elif column.kind == "time":
            df[column.name] = pd.to_datetime(series, utc=True).astype("datetime64[us, UTC]")
        elif column.kind == "date":
            df[column.name] = series.astype("object")
    return df


def _month(value: datetime | date) -> str:
    return f"{value.year:04d}-{value.month:02d}"
