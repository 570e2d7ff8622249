"""Writes of the finance exports: checking a request, recording it, and filling in
its file chunk by chunk (the dramatiq actor in exports.tasks calls
``export_run``; ``manage.py export_finance`` calls it in-process).

A run writes ``<EXPORT_DIR>/<id>/<kind>-<id>.<format>.part`` and renames it when it
is complete, so a download never sees half a file. Progress (``rows_written`` of
``rows_total``) is committed after each chunk. A run that dies is run again from the
start by the next delivery of its message (the actor retries); a finished export is
never run twice (the claim is a conditional update).

The reports (``reconciliation``, ``monthly_report``) are re-exported here, the
app's surface for its apis and commands.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from core.errors import Conflict, InvalidInput, NotFound
from core.models import Organization
from core.money import CURRENCIES
from core.queue import task_send_on_commit
from exports.builders import Column, source_for
from exports.models import FinanceExport
from exports.monthly_report import monthly_report_html, revenue_chart_png
from exports.reconciliation import Reconciliation, reconciliation_compute
from invoicing.selectors import parse_period

# The reports, for the app's apis and commands:
__all__ = ["Reconciliation", "monthly_report_html", "reconciliation_compute", "revenue_chart_png"]

FINANCE_EXPORT_TASK = "finance_export_task"  # the actor in exports/tasks.py

logger = logging.getLogger(__name__)

KINDS = [choice.value for choice in FinanceExport.Kind]
FORMATS = [choice.value for choice in FinanceExport.Format]
# Which parameters each kind takes; "period" is a month (YYYY-MM), "as_of" a date or
# a date and time (a date means the start of the next day: the whole day counts).
PARAMETERS: dict[str, tuple[str, ...]] = {
    "invoice_register": ("period",),
    "revenue": ("period", "currency", "as_of"),
    "provider_earnings": ("period", "currency", "as_of"),
    "ar_aging": ("as_of",),
    "trial_balance": ("as_of", "currency"),
    "deferred_revenue": ("as_of", "currency"),
    "usage_detail": ("organization", "period"),
}
REQUIRED: dict[str, tuple[str, ...]] = {"usage_detail": ("organization", "period")}
CONTENT_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
RUN_TIME_LIMIT = timedelta(hours=2)  # the actor's time limit
XLSX_MAX_ROWS = 1_048_575  # one sheet; more go on the next sheet


# --- checking a request -------------------------------------------------------------


def _text(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text", details={"field": name})
    return value.strip()


def parse_as_of(text: str, *, field: str = "as_of") -> datetime:
    """A date (``2026-10-31``: through the end of that day) or a date and time with
    a time zone; UTC either way."""
    moment: datetime | None = None
    day: date | None = None
    try:
        if len(text) == 10:
            day = parse_date(text)
        else:
            moment = parse_datetime(text)
    except ValueError:
        pass  # a well-formed but impossible date: said below
    if day is not None:
        return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
    if moment is None:
        raise InvalidInput(
            f"{field} must be a date (2026-10-31) or a date and time with a time zone "
            f"(2026-10-31T12:00:00Z), not {text!r}",
            details={"field": field},
        )
    if moment.tzinfo is None:
        raise InvalidInput(
            f"{field} must carry a time zone (Z or +00:00): the books are kept in UTC",
            details={"field": field},
        )
    return moment.astimezone(UTC)


def period_check(text: str) -> date:
    """A month as YYYY-MM; a 400 naming ``period`` otherwise."""
    period = parse_period(text)  # raises InvalidInput naming "period"
    if not 1900 < period.year < 3000:
        raise InvalidInput(f"period {text!r} is out of range", details={"field": "period"})
    return period


def export_params_check(
    *, kind: Any, format: Any, params: dict[str, Any], now: datetime | None = None
) -> tuple[str, str, dict[str, Any]]:
    """Check an export request; return (kind, format, params) in canonical form
    (``period`` as ``YYYY-MM-01``, ``as_of`` as an ISO time in UTC). Errors name
    the field."""
    now = now or timezone.now()
    if kind not in KINDS:
        raise InvalidInput(
            f"kind must be one of {', '.join(KINDS)}, not {kind!r}", details={"field": "kind"}
        )
    if format not in FORMATS:
        raise InvalidInput(
            f"format must be one of {', '.join(FORMATS)}, not {format!r}",
            details={"field": "format"},
        )
    if not isinstance(params, dict):
        raise InvalidInput("params must be an object", details={"field": "params"})
    allowed = PARAMETERS[kind]
    for name in params:
        if name not in allowed and params[name] not in (None, ""):
            raise InvalidInput(
                f"{kind} takes {', '.join(allowed)}; not {name!r}", details={"field": name}
            )
    for name in REQUIRED.get(kind, ()):
        if params.get(name) in (None, ""):
            raise InvalidInput(f"{kind} needs {name}", details={"field": name})
    clean: dict[str, Any] = {}
    if "period" in allowed and (text := _text(params, "period")) is not None:
        clean["period"] = period_check(text).isoformat()
    if "currency" in allowed:
        currency = _text(params, "currency") or settings.TANDEM_CURRENCY
        if currency not in CURRENCIES:
            raise InvalidInput(
                f"currency must be one of {', '.join(sorted(CURRENCIES))}",
                details={"field": "currency"},
            )
        clean["currency"] = currency
    if "as_of" in allowed:
        text = _text(params, "as_of")
        clean["as_of"] = (parse_as_of(text) if text is not None else now).isoformat()
    if "organization" in allowed:
        raw = params.get("organization")
        if isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw.strip())
        if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
            raise InvalidInput(
                "organization must be an organization id", details={"field": "organization"}
            )
        if not Organization.objects.filter(pk=raw).exists():
            raise InvalidInput(f"no organization {raw}", details={"field": "organization"})
        clean["organization"] = raw
    return kind, format, clean


# --- recording and claiming ---------------------------------------------------------


def export_create(
    *, kind: Any, format: Any, params: dict[str, Any], requested_by: str, enqueue: bool = True
) -> FinanceExport:
    """Record an export and, once the record is committed, hand it to a worker."""
    kind, format, clean = export_params_check(kind=kind, format=format, params=params)
    export = FinanceExport.objects.create(
        kind=kind,
        format=format,
        params=clean,
        requested_by=requested_by[:200],
        created_at=timezone.now(),
    )
    if enqueue:
        task_send_on_commit(FINANCE_EXPORT_TASK, export.pk)
    return export


def export_get(*, export_id: int) -> FinanceExport:
    export = FinanceExport.objects.filter(pk=export_id).first()
    if export is None:
        raise NotFound(f"no export {export_id}", details={"export": export_id})
    return export


def export_path(export: FinanceExport) -> Path:
    return Path(settings.EXPORT_DIR) / str(export.pk) / export.file_name


def export_file(*, export: FinanceExport) -> Path:
    """The finished file of an export; a 409 while it is not finished."""
    if export.status != FinanceExport.Status.SUCCEEDED:
        raise Conflict(
            f"export {export.pk} is {export.status}; download it once it has succeeded",
            details={"export": export.pk, "status": export.status},
        )
    path = export_path(export)
    if not path.is_file():
        raise NotFound(f"the file of export {export.pk} is gone", details={"export": export.pk})
    return path


def _claim(export_id: int, now: datetime) -> bool:
    """Take the export for this run. A queued export is taken, and one whose run
    started longer ago than a run may last (its worker died; the broker gave the
    message back); a running or finished one never."""
    stale = Q(status=FinanceExport.Status.RUNNING, started_at__lt=now - RUN_TIME_LIMIT)
    return bool(
        FinanceExport.objects.filter(pk=export_id)
        .filter(Q(status=FinanceExport.Status.QUEUED) | stale)
        .update(
            status=FinanceExport.Status.RUNNING,
            started_at=now,
            rows_written=0,
            attempts=F("attempts") + 1,
            error="",
        )
    )


# --- writing -----------------------------------------------------------------------


class _Writer:
    def write(self, df: pd.DataFrame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _CsvWriter(_Writer):
    def __init__(self, path: Path, columns: list[Column]) -> None:
        self.file = path.open("w", newline="", encoding="utf-8")
        csv.writer(self.file).writerow([c.name for c in columns])

    def write(self, df: pd.DataFrame) -> None:
        df.to_csv(self.file, header=False, index=False, lineterminator="\n")

    def close(self) -> None:
        self.file.close()


def _arrow_schema(columns: list[Column]) -> Any:
    import pyarrow as pa

    types = {
        "int": pa.int64(),
        "int?": pa.int64(),
        "text": pa.string(),
        "time": pa.timestamp("us", tz="UTC"),
        "date": pa.date32(),
    }
    return pa.schema([pa.field(c.name, types[c.kind], nullable=c.kind != "int") for c in columns])


class _ParquetWriter(_Writer):
    def __init__(self, path: Path, columns: list[Column]) -> None:
        import pyarrow.parquet as pq

        self.schema = _arrow_schema(columns)
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, df: pd.DataFrame) -> None:
        import pyarrow as pa

        table = pa.Table.from_pandas(df, schema=self.schema, preserve_index=False)
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()


def _cell(value: Any) -> Any:
    """A value openpyxl can store: times as naive UTC (Excel has no time zones),
    missing values as empty cells."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, pd.Timestamp):
        return value.tz_convert("UTC").tz_localize(None).to_pydatetime()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


class _XlsxWriter(_Writer):
    def __init__(self, path: Path, columns: list[Column], title: str) -> None:
        from openpyxl import Workbook

        self.path = path
        self.title = title[:28]
        self.header = [c.name for c in columns]
        self.book = Workbook(write_only=True)
        self.sheets = 0
        self._sheet()

    def _sheet(self) -> None:
        self.sheets += 1
        name = self.title if self.sheets == 1 else f"{self.title} {self.sheets}"
        self.sheet = self.book.create_sheet(title=name)
        self.sheet.append(self.header)
        self.rows = 0

    def write(self, df: pd.DataFrame) -> None:
        for row in df.itertuples(index=False, name=None):
            if self.rows == XLSX_MAX_ROWS:
                self._sheet()
            self.sheet.append([_cell(v) for v in row])
            self.rows += 1

    def close(self) -> None:
        self.book.save(str(self.path))


def _writer(format: str, path: Path, columns: list[Column], title: str) -> _Writer:
    if format == "csv":
        return _CsvWriter(path, columns)
    if format == "parquet":
        return _ParquetWriter(path, columns)
    return _XlsxWriter(path, columns, title)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def export_write(
    *,
    kind: str,
    format: str,
    params: dict[str, Any],
    path: Path,
    progress: Callable[[int, int | None], None] = lambda written, total: None,
) -> int:
    """Build one export and write it to ``path`` chunk by chunk, calling
    ``progress(rows written, rows total)`` after each; return the rows written."""
    source = source_for(kind, params)
    progress(0, source.total)
    written = 0
    writer = _writer(format, path, source.columns, kind)
    try:
        for chunk in source.chunks:
            if len(chunk):
                writer.write(chunk)
            written += len(chunk)
            progress(written, source.total)
    finally:
        writer.close()
    return written


def export_run(*, export_id: int, now: datetime | None = None) -> FinanceExport | None:
    """Fill in one export (the worker's job). Not one transaction: progress is
    committed as the chunks are written, so GET shows it while it runs."""
    now = now or timezone.now()
    if not _claim(export_id, now):
        return FinanceExport.objects.filter(pk=export_id).first()  # done, running or gone
    export = FinanceExport.objects.get(pk=export_id)
    folder = Path(settings.EXPORT_DIR) / str(export.pk)
    shutil.rmtree(folder, ignore_errors=True)  # what an earlier, dead run left
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{export.kind}-{export.pk}.{export.format}"
    partial = folder / f"{name}.part"

    def progress(written: int, total: int | None) -> None:
        FinanceExport.objects.filter(pk=export.pk).update(rows_written=written, rows_total=total)

    try:
        rows = export_write(
            kind=export.kind,
            format=export.format,
            params=export.params,
            path=partial,
            progress=progress,
        )
    except InvalidInput as error:
        # Input that was right when asked and is not any more (an org deleted): final.
        FinanceExport.objects.filter(pk=export.pk).update(
            status=FinanceExport.Status.FAILED,
            error=error.message[:1000],
            finished_at=timezone.now(),
        )
        shutil.rmtree(folder, ignore_errors=True)
        export.refresh_from_db()
        return export
    except Exception as error:
        # Recorded where finance sees it; a new export is the retry (the same input
        # would most likely fail the same way).
        logger.exception("export %s failed", export.pk)
        FinanceExport.objects.filter(pk=export.pk).update(
            status=FinanceExport.Status.FAILED,
            error=f"{type(error).__name__}: {error}"[:1000],
            finished_at=timezone.now(),
        )
        shutil.rmtree(folder, ignore_errors=True)
        export.refresh_from_db()
        return export
    final = folder / name
    os.replace(partial, final)
    FinanceExport.objects.filter(pk=export.pk).update(
        status=FinanceExport.Status.SUCCEEDED,
        rows_written=rows,
        rows_total=rows,
        file_name=name,
        size_bytes=final.stat().st_size,
        sha256=_sha256(final),
        finished_at=timezone.now(),
    )
    export.refresh_from_db()
    return export
