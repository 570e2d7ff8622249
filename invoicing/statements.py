"""Provider statements: what a provider earned in a month, per node and GPU model.

Built from the journal, not from usage: every posting to the provider's ``payable``
account in the month is one earning (a credit) or one payout (a debit). That covers
both ways GPU time reaches the ledger — rated ``gpu.seconds`` usage (entries
``usage:<id>``; the accruals of that entry say which node, GPU model and how many
GPU-seconds) and settled lease holds (``hold:<lease>:w<n>``; the lease's metered
usage says which node and GPU model, the entry's ``fees`` leg the platform fee). Each
line lists the journal entries it adds up, so every number traces back.

The platform fee on raw leases is paid by the buyer on top of the lease price, so it
is shown but not deducted: net payable is the gross at lease prices.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.models import Event, Organization
from core.money import Money
from invoicing.models import ProviderStatement, UsageAccrual
from invoicing.periods import month_bounds
from invoicing.queries import _any, _select
from ledger import events as ev
from ledger.models import Account, Posting


@dataclass(slots=True)
class StatementLine:
    node: str
    gpu_model: str
    gpu_seconds: int = 0
    gross_micros: int = 0
    fee_micros: int = 0
    entries: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Statement:
    provider_id: int
    currency: str
    period: date
    lines: list[StatementLine]
    payouts: list[tuple[int, int, str]]  # (position, amount, description)
    closing_balance_micros: int

    @property
    def gpu_seconds(self) -> int:
        return sum(line.gpu_seconds for line in self.lines)

    @property
    def gross_micros(self) -> int:
        return sum(line.gross_micros for line in self.lines)

    @property
    def fee_micros(self) -> int:
        return sum(line.fee_micros for line in self.lines)

    @property
    def payouts_micros(self) -> int:
        return sum(amount for _, amount, _ in self.payouts)


def statement_compute(
    *, provider: Organization, period: date, currency: str | None = None
) -> Statement:
    currency = currency or settings.TANDEM_CURRENCY
    return _statements_compute([provider.pk], period, currency)[provider.pk]


def _statements_compute(
    provider_ids: list[int], period: date, currency: str
) -> dict[int, Statement]:
    """The statements of many providers for a month, from a fixed number of queries
    whatever their number; the long lists (positions, transfer ids) go as one array
    each rather than as an IN list of thousands of parameters."""
    start, end = month_bounds(period)
    payable_of = dict(
        Account.objects.filter(
            organization_id__in=provider_ids, kind=Account.Kind.PAYABLE, currency=currency
        ).values_list("organization_id", "pk")
    )
    found = {p: Statement(p, currency, period, [], [], 0) for p in provider_ids}
    if not payable_of:
        return found
    provider_of = {account: provider for provider, account in payable_of.items()}
    postings: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    accounts, accounts_params = _any(sorted(provider_of))
    for account, position, side, amount in _select(
        f"SELECT account_id, entry_position, side, amount_micros FROM {Posting._meta.db_table} "
        f"WHERE account_id {accounts} AND recorded_at >= %s AND recorded_at < %s "
        "ORDER BY entry_position, id",
        [*accounts_params, start, end],
    ):
        postings[provider_of[account]].append((position, side, amount))
    # Rated usage (``usage:…``) needs only its transfer id: the payload of every other
    # entry comes whole (its legs, description, hold).
    events: dict[int, tuple[str, str, str, dict[str, Any] | None]] = {}
    positions, positions_params = _any(
        sorted({p for rows in postings.values() for p, _, _ in rows})
    )
    for position, event_type, transfer_id, description, payload in _select(
        "SELECT position, type, coalesce(payload ->> 'transfer_id', ''), "
        "coalesce(payload ->> 'description', ''), "
        "CASE WHEN payload ->> 'transfer_id' LIKE 'usage:%%' THEN NULL ELSE payload END "
        f"FROM {Event._meta.db_table} WHERE position {positions}",
        positions_params,
    ):
        if isinstance(payload, str):
            payload = json.loads(payload)
        events[position] = (event_type, transfer_id, description, payload)
    # What the lines are made of, read once for all the month's entries rather than
    # once per entry: rated usage by entry, and the metered usage of settled leases.
    usage: defaultdict[tuple[int, str], list[tuple]] = defaultdict(list)
    usage_ids = sorted({t for _, t, _, _ in events.values() if t.startswith("usage:")})
    providers, providers_params = _any(sorted(payable_of))
    if usage_ids:
        transfers, transfers_params = _any(usage_ids)
        for row in _select(
            "SELECT provider_id, transfer_id, node, gpu_model, quantity, provider_micros, "
            f"fee_micros FROM {UsageAccrual._meta.db_table} "
            f"WHERE transfer_id {transfers} AND provider_id {providers} ORDER BY id",
            [*transfers_params, *providers_params],
        ):
            usage[(row[0], row[1])].append(row[2:])
    leases: defaultdict[tuple[int, str], list[tuple]] = defaultdict(list)
    subjects = sorted(
        {
            payload["hold_id"].rsplit(":w", 1)[0]
            for event_type, _, _, payload in events.values()
            if event_type == ev.HOLD_POSTED and payload is not None
        }
    )
    if subjects:
        held, held_params = _any(subjects)
        for provider, subject, node, gpu_model, quantity in _select(
            "SELECT provider_id, subject, node, gpu_model, quantity "
            f"FROM {UsageAccrual._meta.db_table} "
            f"WHERE subject {held} AND provider_id {providers} AND product = 'gpu_lease' "
            "ORDER BY id",
            [*held_params, *providers_params],
        ):
            leases[(provider, subject)].append((node, gpu_model, quantity))
    fees_account = Account.objects.filter(
        organization=None, kind=Account.Kind.FEES, currency=currency
    ).first()
    closing = dict.fromkeys(payable_of.values(), 0)
    for account, balance in _select(
        "SELECT account_id, COALESCE(SUM("
        "CASE WHEN side = 'C' THEN amount_micros ELSE -amount_micros END), 0) "
        f"FROM {Posting._meta.db_table} WHERE account_id {accounts} AND recorded_at < %s "
        "GROUP BY account_id",
        [*accounts_params, end],
    ):
        closing[account] = int(balance)
    for provider, payable in payable_of.items():
        found[provider] = _statement(
            provider,
            currency,
            period,
            postings.get(provider, []),
            events,
            usage,
            leases,
            fees_account.pk if fees_account is not None else None,
            closing[payable],
        )
    return found


def _statement(
    provider: int,
    currency: str,
    period: date,
    postings: list[tuple[int, str, int]],
    events: dict[int, tuple[str, str, str, dict[str, Any] | None]],
    usage: dict[tuple[int, str], list[tuple]],
    leases: dict[tuple[int, str], list[tuple]],
    fees_account: int | None,
    closing: int,
) -> Statement:
    lines: dict[tuple[str, str], StatementLine] = {}
    payouts = []

    def line(node: str, gpu_model: str) -> StatementLine:
        return lines.setdefault((node, gpu_model), StatementLine(node, gpu_model))

    for position, side, amount in postings:
        event_type, transfer_id, description, payload = events[position]
        if side == "D":
            payouts.append((position, amount, description))
            continue
        if transfer_id.startswith("usage:"):
            counted = 0
            for node, gpu_model, quantity, provider_micros, fee_micros in usage.get(
                (provider, transfer_id), ()
            ):
                target = line(node, gpu_model)
                target.gpu_seconds += quantity
                target.gross_micros += provider_micros
                target.fee_micros += fee_micros
                counted += provider_micros
                # Postings come in position order: a repeat can only be the last one.
                if not target.entries or target.entries[-1] != position:
                    target.entries.append(position)
            if counted != amount:
                rest = line("", "unattributed")
                rest.gross_micros += amount - counted
                rest.entries.append(position)
            continue
        payload = payload or {}
        fee = 0
        if fees_account is not None:
            fee = sum(x for a, s, x in payload.get("legs", ()) if a == fees_account and s == "C")
        node, gpu_model, seconds = "", "", 0
        if event_type == ev.HOLD_POSTED:
            subject = payload["hold_id"].rsplit(":w", 1)[0]
            for n, g, q in leases.get((provider, subject), ()):
                node, gpu_model = n, g
                seconds += q
        target = line(node, gpu_model or "other")
        target.gpu_seconds += seconds
        target.gross_micros += amount
        target.fee_micros += fee
        target.entries.append(position)
    ordered = sorted(lines.values(), key=lambda x: (x.node, x.gpu_model))
    return Statement(provider, currency, period, ordered, payouts, closing)


def statement_document(statement: Statement, provider: Organization) -> dict[str, Any]:
    currency = statement.currency

    def money(micros: int) -> dict[str, Any]:
        return {"micros": micros, "text": Money(micros, currency).format()}

    start, end = month_bounds(statement.period)
    return {
        "schema": "tandem.provider_statement/1",
        "provider": {"organization": provider.pk, "name": provider.name},
        "currency": currency,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "lines": [
            {
                "node": x.node,
                "gpu_model": x.gpu_model,
                "gpu_seconds": x.gpu_seconds,
                "gpu_hours": f"{x.gpu_seconds / 3600:.4f}",
                "gross": money(x.gross_micros),
                "platform_fee": money(x.fee_micros),
                "net_payable": money(x.gross_micros),
                "entries": x.entries,
            }
            for x in statement.lines
        ],
        "payouts": [
            {"position": p, "amount": money(a), "description": d} for p, a, d in statement.payouts
        ],
        "totals": {
            "gpu_seconds": statement.gpu_seconds,
            "gross": money(statement.gross_micros),
            "platform_fee": money(statement.fee_micros),
            "net_payable": money(statement.gross_micros),
            "payouts": money(statement.payouts_micros),
            "closing_balance": money(statement.closing_balance_micros),
        },
    }


def statement_key(provider_id: int, period: date, currency: str) -> str:
    return f"statement:{provider_id}:{period:%Y-%m}:{currency}"


def statements_close(*, period: date, now: datetime | None = None) -> int:
    """Write (or rewrite) every provider's statement for the month; return how many.

    All in one statement (an upsert on the statement's key) and one transaction: a
    month close writes them beside its chunks, and forty providers' read-lock, insert
    or update and commit each, one after another, cost the close's cores more (the
    ORM's work, a WAL flush each) than computing the statements did. A rerun rewrites
    them as each one's ``update_or_create`` would."""
    now = now or timezone.now()
    currency = settings.TANDEM_CURRENCY
    start, end = month_bounds(period)
    provider_ids = sorted(
        set(
            Posting.objects.filter(
                account__kind=Account.Kind.PAYABLE,
                account__currency=currency,
                recorded_at__gte=start,
                recorded_at__lt=end,
            ).values_list("account__organization_id", flat=True)
        )
    )
    statements = _statements_compute(provider_ids, period, currency)
    rows = [
        ProviderStatement(
            key=statement_key(provider.pk, period, currency),
            organization=provider,
            currency=currency,
            period_start=start,
            period_end=end,
            gpu_seconds=statement.gpu_seconds,
            gross_micros=statement.gross_micros,
            fee_micros=statement.fee_micros,
            net_payable_micros=statement.gross_micros,
            payouts_micros=statement.payouts_micros,
            closing_balance_micros=statement.closing_balance_micros,
            document=statement_document(statement, provider),
            generated_at=now,
        )
        for provider in Organization.objects.filter(pk__in=provider_ids).order_by("pk")
        for statement in [statements[provider.pk]]
    ]
    if rows:
        with transaction.atomic():
            ProviderStatement.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["key"],
                update_fields=[
                    f.name
                    for f in ProviderStatement._meta.concrete_fields
                    if not f.primary_key and f.name != "key"
                ],
            )
    return len(rows)
