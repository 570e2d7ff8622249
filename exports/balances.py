"""The trial balance and deferred revenue at a date: postings recorded before
``as_of``."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import pandas as pd
from django.db import connection
from django.db.models import Q

from exports.frames import Column, _money_columns, frame
from exports.journal import journal_chunks
from ledger.models import Account, Posting

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
