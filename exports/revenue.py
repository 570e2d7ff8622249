"""The revenue export: every posting to the platform's ``revenue`` and ``fees``
accounts, attributed to product, model, GPU model and region through the usage
accruals of the entry that posted it (see ``exports/builders.py`` for the rule)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, NamedTuple

import pandas as pd
from django.db.models import Max, Q

from exports.frames import Column, _money_columns, _month, frame
from exports.journal import Line, _lease_subject, journal_chunks
from invoicing.models import UsageAccrual
from invoicing.selectors import month_bounds
from ledger.models import Account, Balance

REVENUE_KINDS = (Account.Kind.REVENUE, Account.Kind.FEES)
UNATTRIBUTED = "unattributed"


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


def revenue_books_version(*, currency: str) -> tuple[int, int]:
    """What ``revenue_frame`` is a function of, in two index reads: the newest ledger
    event on the platform's revenue and fees accounts (their balances' position) and
    the newest usage accrual (accruals are only appended; a replay rebuilds them
    under new ids). The same version, the same frame."""
    position = Balance.objects.filter(
        account__organization__isnull=True,
        account__kind__in=REVENUE_KINDS,
        account__currency=currency,
    ).aggregate(newest=Max("position"))["newest"]
    accrual = UsageAccrual.objects.aggregate(newest=Max("id"))["newest"]
    return (position or 0, accrual or 0)


def revenue_frame(
    *,
    currency: str,
    period: date | None = None,
    as_of: datetime | None = None,
    from_month: date | None = None,
) -> pd.DataFrame:
    """Revenue and fees by month x product x model x GPU model x region: of the month
    ``period``, or of every month from ``from_month`` on, or of all time. Only what was
    posted from that month's start is read: usage is rated after it happens, so no
    earlier posting belongs to a later month."""
    first = period if period is not None else from_month
    since = month_bounds(first)[0] if first is not None else None
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


class _Accrual(NamedTuple):
    transfer_id: str
    amount_micros: int
    provider_micros: int
    fee_micros: int
    period: date
    product: str
    model: str
    gpu_model: str
    region: str


def _revenue_chunk(
    lines: list[Line], kind_of: dict[int, str], add: Callable[[Any, str, int, int], None]
) -> None:
    """Attribute one chunk of revenue and fees postings (see the module's doc)."""
    usage_refs = {line.ref for line in lines if line.ref.startswith("usage:")}
    # Only the fields attribution reads: a busy month has thousands of accruals a
    # chunk, and whole model instances cost more than the query.
    by_transfer: dict[str, list[_Accrual]] = defaultdict(list)
    for row in (
        UsageAccrual.objects.filter(transfer_id__in=usage_refs)
        .order_by("id")
        .values_list(*_Accrual._fields)
    ):
        accrual = _Accrual(*row)
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
