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
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
from django.conf import settings
from django.db import connection
from django.db.models import Count, Q
from django.db.models.fields.json import KeyTextTransform

from core.models import Organization
from core.money import Money
from invoicing.models import Invoice, UsageAccrual
from invoicing.selectors import month_bounds, outstanding
from invoicing.services import PRODUCT_OF
from ledger.models import Account, Posting
from metering.models import UsageEvent
from pricing.selectors import rate_for
from pricing.services import rate_usage

CHUNK_ROWS = 50_000
AGING_BUCKETS = ("0-30", "31-60", "61-90", "90+")
REVENUE_KINDS = (Account.Kind.REVENUE, Account.Kind.FEES)
UNATTRIBUTED = "unattributed"


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


# --- the journal, read with each posting's entry reference -------------------------


@dataclass(frozen=True, slots=True)
class Line:
    position: int
    account_id: int
    side: str
    amount_micros: int
    currency: str
    recorded_at: datetime
    ref: str  # the transfer id, or ``hold:<hold id>`` for a settled hold
    kind: str  # the entry's kind (usage, grant, top_up, …); "hold" for holds

    @property
    def signed_credit(self) -> int:
        return self.amount_micros if self.side == Account.Side.CREDIT else -self.amount_micros


def journal_chunks(
    accounts: Q,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    size: int | None = None,
) -> Iterator[list[Line]]:
    """Postings on the accounts matching ``accounts`` in ``[since, until)``, in the
    order they were written, each with its entry's reference and kind (one join, no
    query per row), ``size`` at a time: one short query per chunk (keyset on the
    posting id), so neither a long transaction nor the whole journal in memory."""
    size = size or CHUNK_ROWS
    postings = Posting.objects.filter(account__in=Account.objects.filter(accounts))
    if since is not None:
        postings = postings.filter(recorded_at__gte=since)
    if until is not None:
        postings = postings.filter(recorded_at__lt=until)
    after = 0
    while True:
        rows = list(
            postings.filter(id__gt=after)
            .order_by("id")
            .values_list(
                "id",
                "entry_id",
                "account_id",
                "side",
                "amount_micros",
                "currency",
                "recorded_at",
                KeyTextTransform("transfer_id", "entry__payload"),
                KeyTextTransform("hold_id", "entry__payload"),
                KeyTextTransform("kind", "entry__payload"),
            )[:size]
        )
        if not rows:
            return
        after = rows[-1][0]
        yield [
            Line(p, a, s, x, c, at, t or f"hold:{h}", k or "hold")
            for _, p, a, s, x, c, at, t, h, k in rows
        ]


def journal(
    accounts: Q, *, since: datetime | None = None, until: datetime | None = None
) -> list[Line]:
    """All of ``journal_chunks`` in one list."""
    return [line for chunk in journal_chunks(accounts, since=since, until=until) for line in chunk]


def _lease_subject(ref: str) -> str:
    """``hold:<lease>:w<n>`` → the lease's usage subject."""
    return ref.removeprefix("hold:").rsplit(":w", 1)[0]


# --- revenue ----------------------------------------------------------------------

REVENUE_COLUMNS = [
    Column("month", "text"),
    Column("currency", "text"),
    Column("product", "text"),
    Column("model", "text"),
    Column("gpu_model", "text"),
    Column("region", "text"),
    Column("entries", "int"),
    *_money_columns("revenue", "fees", "total"),
]


def revenue_frame(
    *, currency: str, period: date | None = None, as_of: datetime | None = None
) -> pd.DataFrame:
    """Revenue and fees by month x product x model x GPU model x region."""
    since = month_bounds(period)[0] if period is not None else None
    kind_of = dict(
        Account.objects.filter(organization__isnull=True, currency=currency).values_list(
            "pk", "kind"
        )
    )
    # (month, product, model, gpu_model, region) -> [revenue, fees, entries, last entry]
    sums: dict[tuple[str, str, str, str, str], list[int]] = {}

    def add(key: tuple[str, str, str, str, str], account_kind: str, amount: int, pos: int):
        row = sums.setdefault(key, [0, 0, 0, 0])
        row[0 if account_kind == Account.Kind.REVENUE else 1] += amount
        if row[3] != pos:  # an entry's postings come one after another
            row[2] += 1
            row[3] = pos

    for lines in journal_chunks(
        Q(organization__isnull=True, kind__in=REVENUE_KINDS, currency=currency),
        since=since,
        until=as_of,
    ):
        _revenue_chunk(lines, kind_of, add)

    wanted = _month(period) if period is not None else None
    records = [
        {
            "month": key[0],
            "currency": currency,
            "product": key[1],
            "model": key[2],
            "gpu_model": key[3],
            "region": key[4],
            "entries": entries,
            "revenue_micros": revenue,
            "fees_micros": fees,
            "total_micros": revenue + fees,
        }
        for key, (revenue, fees, entries, _) in sorted(sums.items())
        if wanted is None or key[0] == wanted
    ]
    return frame(REVENUE_COLUMNS, records)


def _revenue_chunk(
    lines: list[Line], kind_of: dict[int, str], add: Callable[[Any, str, int, int], None]
) -> None:
    """Attribute one chunk of revenue and fees postings (see the module's doc)."""
    usage_refs = {line.ref for line in lines if line.ref.startswith("usage:")}
    by_transfer: dict[str, list[UsageAccrual]] = defaultdict(list)
    for accrual in UsageAccrual.objects.filter(transfer_id__in=usage_refs).order_by("id"):
        by_transfer[accrual.transfer_id].append(accrual)
    leases = {_lease_subject(line.ref) for line in lines if line.ref.startswith("hold:")}
    lease_dims: dict[str, tuple[str, str]] = {}
    for subject, gpu_model, region in (
        UsageAccrual.objects.filter(subject__in=leases, product="gpu_lease", transfer_id="")
        .order_by("id")
        .values_list("subject", "gpu_model", "region")
    ):
        lease_dims.setdefault(subject, (gpu_model, region))
    jobs = {line.ref.split(":", 2)[2] for line in lines if line.ref.startswith("ftmin:")}
    job_model: dict[str, str] = {}
    for subject, model in (
        UsageAccrual.objects.filter(subject__in=jobs, product="fine_tune")
        .order_by("id")
        .values_list("subject", "model")
    ):
        job_model.setdefault(subject, model)

    for line in lines:
        account_kind = kind_of[line.account_id]
        amount = line.signed_credit
        posted_month = _month(line.recorded_at)
        if line.ref.startswith("usage:"):
            explained = 0
            for a in by_transfer.get(line.ref, ()):
                share = (
                    a.amount_micros - a.provider_micros - a.fee_micros
                    if account_kind == Account.Kind.REVENUE
                    else a.fee_micros
                )
                if not share:
                    continue
                if line.side == Account.Side.DEBIT:
                    share = -share
                explained += share
                key = (_month(a.period), a.product, a.model, a.gpu_model, a.region)
                add(key, account_kind, share, line.position)
            if explained != amount:
                add(
                    (posted_month, UNATTRIBUTED, "", "", ""),
                    account_kind,
                    amount - explained,
                    line.position,
                )
            continue
        if line.ref.startswith("hold:") and _lease_subject(line.ref) in lease_dims:
            gpu_model, region = lease_dims[_lease_subject(line.ref)]
            key = (posted_month, "gpu_lease", "", gpu_model, region)
        elif line.ref.startswith("hold:") and account_kind == Account.Kind.FEES:
            # Only a settled lease hold pays a platform fee; its usage was not found.
            key = (posted_month, "gpu_lease", "", "", "")
        elif line.ref.startswith("ftmin:"):
            key = (posted_month, "fine_tune", job_model.get(line.ref.split(":", 2)[2], ""), "", "")
        elif line.ref.startswith("cn:"):
            key = (posted_month, "credit_note", "", "", "")
        elif line.ref.startswith("invoice:") and line.ref.endswith(":void"):
            key = (posted_month, "invoice_void", "", "", "")
        elif line.kind == "adjustment":
            key = (posted_month, "adjustment", "", "", "")
        else:
            key = (posted_month, "other", "", "", "")
        add(key, account_kind, amount, line.position)


# --- the invoice register ------------------------------------------------------------

INVOICE_REGISTER_COLUMNS = [
    Column("number", "text"),
    Column("key", "text"),
    Column("organization_id", "int"),
    Column("organization", "text"),
    Column("kind", "text"),
    Column("status", "text"),
    Column("currency", "text"),
    Column("period_start", "time"),
    Column("period_end", "time"),
    Column("job", "text"),
    Column("finalized_at", "time"),
    Column("due_at", "time"),
    Column("closed_at", "time"),
    Column("tax_rate_bps", "int"),
    *_money_columns(
        "subtotal_exact",
        "subtotal",
        "rounding",
        "tax",
        "total",
        "prepaid_applied",
        "amount_due",
        "amount_paid",
        "credited",
        "written_off",
        "outstanding",
    ),
    Column("payment_reference", "text"),
]


def _final_invoices(period: date | None) -> Any:
    invoices = Invoice.objects.exclude(status=Invoice.Status.DRAFT).select_related("organization")
    if period is not None:
        start, end = month_bounds(period)
        invoices = invoices.filter(period_start__gte=start, period_start__lt=end)
    return invoices.prefetch_related("credit_notes").order_by("issuer", "number")


def invoice_register_frame(*, period: date | None = None) -> pd.DataFrame:
    """Every finalized invoice (open, past due, paid, void, uncollectible)."""
    records = []
    for invoice in _final_invoices(period):
        records.append(
            {
                "number": invoice.number,
                "key": invoice.key,
                "organization_id": invoice.organization_id,
                "organization": invoice.organization.name,
                "kind": invoice.kind,
                "status": invoice.status,
                "currency": invoice.currency,
                "period_start": invoice.period_start,
                "period_end": invoice.period_end,
                "job": invoice.job,
                "finalized_at": invoice.finalized_at,
                "due_at": invoice.due_at,
                "closed_at": invoice.closed_at,
                "tax_rate_bps": invoice.tax_rate_bps,
                "subtotal_exact_micros": invoice.subtotal_exact_micros,
                "subtotal_micros": invoice.subtotal_micros,
                "rounding_micros": invoice.rounding_micros,
                "tax_micros": invoice.tax_micros,
                "total_micros": invoice.total_micros,
                "prepaid_applied_micros": invoice.prepaid_applied_micros,
                "amount_due_micros": invoice.amount_due_micros,
                "amount_paid_micros": invoice.amount_paid_micros,
                "credited_micros": invoice.credited_micros,
                "written_off_micros": invoice.written_off_micros,
                "outstanding_micros": invoice_outstanding(invoice),
                "payment_reference": invoice.payment_reference,
            }
        )
    return frame(INVOICE_REGISTER_COLUMNS, records)


def invoice_outstanding(invoice: Invoice) -> int:
    """What is still owed on a finalized invoice; nothing on a void, paid or
    written-off one (``outstanding`` reads amounts only, not the status)."""
    if invoice.status not in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE):
        return 0
    return outstanding(invoice)


# --- accounts-receivable aging ----------------------------------------------------------

AR_AGING_COLUMNS = [
    Column("number", "text"),
    Column("organization_id", "int"),
    Column("organization", "text"),
    Column("currency", "text"),
    Column("status", "text"),
    Column("finalized_at", "time"),
    Column("due_at", "time"),
    Column("days_past_due", "int"),
    Column("bucket", "text"),
    *_money_columns("outstanding", "days_0_30", "days_31_60", "days_61_90", "days_90_plus"),
]


def aging_bucket(days_past_due: int) -> str:
    """Not yet due counts with the first bucket (0-30 days)."""
    if days_past_due <= 30:
        return "0-30"
    if days_past_due <= 60:
        return "31-60"
    if days_past_due <= 90:
        return "61-90"
    return "90+"


def ar_aging_frame(*, as_of: datetime) -> pd.DataFrame:
    """Open and past-due invoices with something still owed, aged by their due date."""
    bucket_column = dict(
        zip(AGING_BUCKETS, ("days_0_30", "days_31_60", "days_61_90", "days_90_plus"), strict=True)
    )
    invoices = (
        Invoice.objects.filter(
            status__in=(Invoice.Status.OPEN, Invoice.Status.PAST_DUE), finalized_at__lte=as_of
        )
        .select_related("organization")
        .prefetch_related("credit_notes")
        .order_by("due_at", "number")
    )
    records = []
    for invoice in invoices:
        owed = invoice_outstanding(invoice)
        if owed <= 0:
            continue
        assert invoice.due_at is not None  # finalized
        days = (as_of.date() - invoice.due_at.astimezone(UTC).date()).days
        bucket = aging_bucket(days)
        record = {
            "number": invoice.number,
            "organization_id": invoice.organization_id,
            "organization": invoice.organization.name,
            "currency": invoice.currency,
            "status": invoice.status,
            "finalized_at": invoice.finalized_at,
            "due_at": invoice.due_at,
            "days_past_due": days,
            "bucket": bucket,
            "outstanding_micros": owed,
        }
        for name, column in bucket_column.items():
            record[f"{column}_micros"] = owed if name == bucket else 0
        records.append(record)
    return frame(AR_AGING_COLUMNS, records)


# --- trial balance and deferred revenue at a date -----------------------------------

TRIAL_BALANCE_COLUMNS = [
    Column("account_id", "int"),
    Column("organization_id", "int?"),
    Column("owner", "text"),
    Column("kind", "text"),
    Column("currency", "text"),
    Column("normal_side", "text"),
    *_money_columns("debits", "credits", "balance"),
]


def _posted_sums(accounts: Q, as_of: datetime) -> dict[int, tuple[int, int]]:
    """account id → (debits, credits) posted before ``as_of``, summed in SQL."""
    with connection.cursor() as cursor:
        ids = list(Account.objects.filter(accounts).values_list("pk", flat=True))
        if not ids:
            return {}
        cursor.execute(
            "SELECT account_id, "
            "COALESCE(SUM(CASE WHEN side = 'D' THEN amount_micros ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN side = 'C' THEN amount_micros ELSE 0 END), 0) "
            f"FROM {Posting._meta.db_table} "
            f"WHERE recorded_at < %s AND account_id IN ({', '.join(['%s'] * len(ids))}) "
            "GROUP BY account_id",
            [as_of, *ids],
        )
        return {row[0]: (int(row[1]), int(row[2])) for row in cursor.fetchall()}


def trial_balance_frame(*, as_of: datetime, currency: str | None = None) -> pd.DataFrame:
    """Every account's posted debits, credits and balance before ``as_of``."""
    scope = Q(currency=currency) if currency else Q()
    sums = _posted_sums(scope, as_of)
    accounts = (
        Account.objects.filter(scope, pk__in=sums)
        .select_related("organization")
        .order_by("currency", "organization__name", "kind", "pk")
    )
    records = []
    for account in accounts:
        debits, credits = sums[account.pk]
        records.append(
            {
                "account_id": account.pk,
                "organization_id": account.organization_id,
                "owner": account.organization.name if account.organization else "platform",
                "kind": account.kind,
                "currency": account.currency,
                "normal_side": "credit" if account.normal_side == Account.Side.CREDIT else "debit",
                "debits_micros": debits,
                "credits_micros": credits,
                "balance_micros": (
                    credits - debits
                    if account.normal_side == Account.Side.CREDIT
                    else debits - credits
                ),
            }
        )
    return frame(TRIAL_BALANCE_COLUMNS, records)


DEFERRED_REVENUE_COLUMNS = [
    Column("organization_id", "int"),
    Column("organization", "text"),
    Column("currency", "text"),
    *_money_columns("granted", "paid_in", "other_credits", "consumed", "balance"),
]


def deferred_revenue_frame(*, as_of: datetime, currency: str | None = None) -> pd.DataFrame:
    """Unused prepaid credit per buyer before ``as_of``: what the platform still owes
    in service. ``granted`` (promo grants, no cash behind them) and ``paid_in``
    (top-ups) are the credits that built it; ``consumed`` is every debit."""
    scope = Q(kind=Account.Kind.CREDIT, organization__isnull=False)
    if currency:
        scope &= Q(currency=currency)
    sums: dict[int, dict[str, int]] = defaultdict(
        lambda: {"granted": 0, "paid_in": 0, "other_credits": 0, "consumed": 0}
    )
    lines = (line for chunk in journal_chunks(scope, until=as_of) for line in chunk)
    for line in lines:
        row = sums[line.account_id]
        if line.side == Account.Side.DEBIT:
            row["consumed"] += line.amount_micros
        elif line.kind == "grant":
            row["granted"] += line.amount_micros
        elif line.kind == "top_up":
            row["paid_in"] += line.amount_micros
        else:
            row["other_credits"] += line.amount_micros
    accounts = (
        Account.objects.filter(pk__in=sums)
        .select_related("organization")
        .order_by("currency", "organization__name", "pk")
    )
    records = []
    for account in accounts:
        row = sums[account.pk]
        assert account.organization is not None
        records.append(
            {
                "organization_id": account.organization_id,
                "organization": account.organization.name,
                "currency": account.currency,
                **{f"{name}_micros": value for name, value in row.items()},
                "balance_micros": row["granted"]
                + row["paid_in"]
                + row["other_credits"]
                - row["consumed"],
            }
        )
    return frame(DEFERRED_REVENUE_COLUMNS, records)


# --- provider earnings and payouts ----------------------------------------------------

PROVIDER_EARNINGS_COLUMNS = [
    Column("month", "text"),
    Column("provider_id", "int"),
    Column("provider", "text"),
    Column("currency", "text"),
    Column("gpu_seconds", "int"),
    Column("payouts", "int"),
    *_money_columns(
        "opening_balance", "earned", "paid_out", "reversed", "other", "closing_balance"
    ),
]


def provider_earnings_frame(
    *, currency: str, period: date | None = None, as_of: datetime | None = None
) -> pd.DataFrame:
    """Per provider and month of posting: what it earned (GPU time, at lease prices),
    what was paid out to it (payout holds posted), transfers Stripe reversed (put
    back on the payable), anything else (corrections), and the payable's balance."""
    owner = dict(
        Account.objects.filter(kind=Account.Kind.PAYABLE, currency=currency).values_list(
            "pk", "organization_id"
        )
    )
    names = dict(Organization.objects.filter(pk__in=set(owner.values())).values_list("pk", "name"))
    rows: dict[tuple[str, int], dict[str, int]] = {}
    for lines in journal_chunks(
        Q(kind=Account.Kind.PAYABLE, currency=currency, organization__isnull=False), until=as_of
    ):
        _earnings_chunk(lines, owner, rows)
    balance: dict[int, int] = defaultdict(int)
    wanted = _month(period) if period is not None else None
    records = []
    for (month, provider), row in sorted(rows.items()):
        opening = balance[provider]
        closing = opening + row["earned"] - row["paid_out"] + row["reversed"] + row["other"]
        balance[provider] = closing
        if wanted is not None and month != wanted:
            continue
        records.append(
            {
                "month": month,
                "provider_id": provider,
                "provider": names.get(provider, ""),
                "currency": currency,
                "gpu_seconds": row["gpu_seconds"],
                "payouts": row["payouts"],
                "opening_balance_micros": opening,
                "earned_micros": row["earned"],
                "paid_out_micros": row["paid_out"],
                "reversed_micros": row["reversed"],
                "other_micros": row["other"],
                "closing_balance_micros": closing,
            }
        )
    return frame(PROVIDER_EARNINGS_COLUMNS, records)


def _earnings_chunk(
    lines: list[Line], owner: dict[int, int], rows: dict[tuple[str, int], dict[str, int]]
) -> None:
    """Add one chunk of payable postings to ``rows`` (month, provider) -> sums."""
    usage_refs = {line.ref for line in lines if line.ref.startswith("usage:")}
    seconds_of_usage: dict[tuple[str, int | None], int] = defaultdict(int)
    for transfer_id, provider_id, quantity in UsageAccrual.objects.filter(
        transfer_id__in=usage_refs, product="gpu_lease"
    ).values_list("transfer_id", "provider_id", "quantity"):
        seconds_of_usage[(transfer_id, provider_id)] += quantity
    leases = {_lease_subject(line.ref) for line in lines if line.ref.startswith("hold:")}
    seconds_of_lease: dict[tuple[str, int | None], int] = defaultdict(int)
    for subject, provider_id, quantity in UsageAccrual.objects.filter(
        subject__in=leases, product="gpu_lease", transfer_id=""
    ).values_list("subject", "provider_id", "quantity"):
        seconds_of_lease[(subject, provider_id)] += quantity
    empty = {"gpu_seconds": 0, "payouts": 0, "earned": 0, "paid_out": 0, "reversed": 0, "other": 0}
    for line in lines:
        provider = owner[line.account_id]
        row = rows.setdefault((_month(line.recorded_at), provider), dict(empty))
        if line.ref.startswith("hold:payout:") and line.side == Account.Side.DEBIT:
            row["paid_out"] += line.amount_micros
            row["payouts"] += 1
        elif line.ref.startswith("payout-reversal:"):
            row["reversed"] += line.signed_credit
        elif line.kind in ("usage", "hold") and line.side == Account.Side.CREDIT:
            row["earned"] += line.amount_micros
            if line.ref.startswith("usage:"):
                row["gpu_seconds"] += seconds_of_usage.get((line.ref, provider), 0)
            else:
                row["gpu_seconds"] += seconds_of_lease.get((_lease_subject(line.ref), provider), 0)
        else:
            row["other"] += line.signed_credit


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


def invoices_by_status(period: date | None = None) -> dict[str, int]:
    """How many finalized invoices are in each status (for the monthly report)."""
    query = _final_invoices(period).order_by()
    return dict(query.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))


COLUMNS: dict[str, list[Column]] = {
    "invoice_register": INVOICE_REGISTER_COLUMNS,
    "revenue": REVENUE_COLUMNS,
    "provider_earnings": PROVIDER_EARNINGS_COLUMNS,
    "ar_aging": AR_AGING_COLUMNS,
    "trial_balance": TRIAL_BALANCE_COLUMNS,
    "deferred_revenue": DEFERRED_REVENUE_COLUMNS,
    "usage_detail": USAGE_DETAIL_COLUMNS,
}
