"""Provider earnings and payouts: postings to each provider's ``payable`` account, by
month."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime

import pandas as pd
from django.db.models import Q

from core.models import Organization
from exports.frames import Column, _money_columns, _month, frame
from exports.journal import Line, _lease_subject, journal_chunks
from invoicing.models import UsageAccrual
from ledger.models import Account

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
