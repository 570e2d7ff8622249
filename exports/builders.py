"""The finance exports' frames, built with pandas from the journal and the documents.

Each builder returns an ``ExportSource``: its columns (with types, so every chunk
and every format has the same schema), the number of rows when it is known up
front, and an iterator of DataFrame chunks. Aggregated reports (a few rows per
account, invoice or provider and month) come as one chunk; the usage detail, which
can be millions of rows, is read through a server-side cursor and comes in chunks
of ``CHUNK_ROWS``, so neither the database driver nor the worker holds it whole.

Money columns are integer micro-units (``*_micros``) with the same amount as exact
decimal text beside them (``total`` next to ``total_micros``): never a float.

Where a number comes from:

- ``revenue``: every posting to the platform's ``revenue`` and ``fees`` accounts
  (credits less debits), attributed to product, model, GPU model and region through
  the usage accruals of the entry that posted it (``usage:<id>``), the lease whose
  hold it settled (``hold:<lease>:w<n>``) or the job of a minimum charge
  (``ftmin:…``). Rated usage counts in the month it was used (the month its invoice
  bills); everything else in the month it was posted. What an entry posted beyond
  what its accruals explain is a row with product ``unattributed``, so the export
  always adds up to the ledger.
- ``trial_balance`` and ``deferred_revenue``: postings recorded before ``as_of``.
- ``provider_earnings``: postings to each provider's ``payable`` account, by month.
- ``ar_aging``: open and past-due invoices finalized by ``as_of``, what is still
  owed on each (invoicing's ``outstanding``, as it stands now) in buckets by days
  past the due date on ``as_of``.

Each builder lives in a module named for its export: ``revenue``, ``receivables``
(the invoice register and the aging), ``balances`` (trial balance, deferred revenue),
``provider_earnings`` and ``usage_detail``; the columns and frames they share in
``frames``, the journal as they read it in ``journal``. This module picks the source
of an export by its kind and re-exports the builders for the rest of the app.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
from django.conf import settings

from exports.balances import (
    DEFERRED_REVENUE_COLUMNS,
    TRIAL_BALANCE_COLUMNS,
    deferred_revenue_frame,
    trial_balance_frame,
)
from exports.frames import CHUNK_ROWS, Column, ExportSource
from exports.journal import Line, journal
from exports.provider_earnings import PROVIDER_EARNINGS_COLUMNS, provider_earnings_frame
from exports.receivables import (
    AR_AGING_COLUMNS,
    INVOICE_REGISTER_COLUMNS,
    aging_bucket,
    ar_aging_frame,
    invoice_outstanding,
    invoice_register_frame,
    invoices_by_status,
)
from exports.revenue import REVENUE_COLUMNS, revenue_frame
from exports.usage_detail import USAGE_DETAIL_COLUMNS, usage_detail_chunks, usage_detail_count

__all__ = [
    "CHUNK_ROWS",
    "COLUMNS",
    "TRIAL_BALANCE_COLUMNS",
    "Column",
    "ExportSource",
    "Line",
    "aging_bucket",
    "deferred_revenue_frame",
    "invoice_outstanding",
    "invoices_by_status",
    "journal",
    "provider_earnings_frame",
    "revenue_frame",
    "source_for",
]


# --- sources ----------------------------------------------------------------------------


def source_for(kind: str, params: dict[str, Any]) -> ExportSource:
    """The columns and chunks of one export; ``params`` as services checked them."""
    period = date.fromisoformat(params["period"]) if params.get("period") else None
    as_of = datetime.fromisoformat(params["as_of"]) if params.get("as_of") else None
    currency: str = params.get("currency") or settings.TANDEM_CURRENCY
    if kind == "invoice_register":
        return _one_frame(INVOICE_REGISTER_COLUMNS, invoice_register_frame(period=period))
    if kind == "revenue":
        return _one_frame(
            REVENUE_COLUMNS, revenue_frame(currency=currency, period=period, as_of=as_of)
        )
    if kind == "provider_earnings":
        return _one_frame(
            PROVIDER_EARNINGS_COLUMNS,
            provider_earnings_frame(currency=currency, period=period, as_of=as_of),
        )
    if kind == "ar_aging":
        assert as_of is not None
        return _one_frame(AR_AGING_COLUMNS, ar_aging_frame(as_of=as_of))
    if kind == "trial_balance":
        assert as_of is not None
        return _one_frame(
            TRIAL_BALANCE_COLUMNS, trial_balance_frame(as_of=as_of, currency=currency)
        )
    if kind == "deferred_revenue":
        assert as_of is not None
        return _one_frame(
            DEFERRED_REVENUE_COLUMNS, deferred_revenue_frame(as_of=as_of, currency=currency)
        )
    if kind == "usage_detail":
        assert period is not None
        organization_id = int(params["organization"])
        return ExportSource(
            USAGE_DETAIL_COLUMNS,
            usage_detail_chunks(
                organization_id=organization_id, period=period, chunk_rows=CHUNK_ROWS
            ),
            usage_detail_count(organization_id=organization_id, period=period),
        )
    raise KeyError(kind)


def _one_frame(columns: list[Column], df: pd.DataFrame) -> ExportSource:
    return ExportSource(columns, iter([df]), len(df))


COLUMNS: dict[str, list[Column]] = {
    "invoice_register": INVOICE_REGISTER_COLUMNS,
    "revenue": REVENUE_COLUMNS,
    "provider_earnings": PROVIDER_EARNINGS_COLUMNS,
    "ar_aging": AR_AGING_COLUMNS,
    "trial_balance": TRIAL_BALANCE_COLUMNS,
    "deferred_revenue": DEFERRED_REVENUE_COLUMNS,
    "usage_detail": USAGE_DETAIL_COLUMNS,
}
