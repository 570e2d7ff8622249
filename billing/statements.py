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

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing import events as ev
from billing.invoicing import _chunks, month_bounds
from billing.models import Account, Posting, ProviderStatement, UsageAccrual
from core.models import Event, Organization
from core.money import Money


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
    start, end = month_bounds(period)
    payable = Account.objects.filter(
        organization=provider, kind=Account.Kind.PAYABLE, currency=currency
    ).first()
    if payable is None:
        return Statement(provider.pk, currency, period, [], [], 0)
    postings = list(
        Posting.objects.filter(account=payable, recorded_at__gte=start, recorded_at__lt=end)
        .order_by("entry_id")
        .values_list("entry_id", "side", "amount_micros")
    )
    events = {
        position: (event_type, payload)
        for position, event_type, payload in Event.objects.filter(
            position__in=[p[0] for p in postings]
        ).values_list("position", "type", "payload")
    }
    # What the lines are made of, read once for all the month's entries rather than
    # once per entry: rated usage by entry, and the metered usage of settled leases.
    usage: defaultdict[str, list[Any]] = defaultdict(list)
    usage_ids = sorted({payload.get("transfer_id", "") for _, payload in events.values()} - {""})
    for chunk in _chunks([t for t in usage_ids if t.startswith("usage:")]):
        for a in (
            UsageAccrual.objects.filter(transfer_id__in=chunk, provider_id=provider.pk)
            .order_by("id")
            .values_list(
                "transfer_id",
                "node",
                "gpu_model",
                "quantity",
                "provider_micros",
                "fee_micros",
                named=True,
            )
        ):
            usage[a.transfer_id].append(a)
    leases = defaultdict(list)
    subjects = sorted(
        {
            payload["hold_id"].rsplit(":w", 1)[0]
            for event_type, payload in events.values()
            if event_type == ev.HOLD_POSTED
        }
    )
    for chunk in _chunks(subjects):
        for subject, node, gpu_model, quantity in (
            UsageAccrual.objects.filter(
                subject__in=chunk, provider_id=provider.pk, product="gpu_lease"
            )
            .order_by("id")
            .values_list("subject", "node", "gpu_model", "quantity")
        ):
            leases[subject].append((node, gpu_model, quantity))
    fees_account = Account.objects.filter(
        organization=None, kind=Account.Kind.FEES, currency=currency
    ).first()
    lines: dict[tuple[str, str], StatementLine] = {}
    payouts = []

    def line(node: str, gpu_model: str) -> StatementLine:
        return lines.setdefault((node, gpu_model), StatementLine(node, gpu_model))

    for position, side, amount in postings:
        event_type, payload = events[position]
        if side == "D":
            payouts.append((position, amount, payload.get("description", "")))
            continue
        transfer_id = payload.get("transfer_id", "")
        if transfer_id.startswith("usage:"):
            counted = 0
            for a in usage.get(transfer_id, ()):
                target = line(a.node, a.gpu_model)
                target.gpu_seconds += a.quantity
                target.gross_micros += a.provider_micros
                target.fee_micros += a.fee_micros
                counted += a.provider_micros
                if position not in target.entries:
                    target.entries.append(position)
            if counted != amount:
                rest = line("", "unattributed")
                rest.gross_micros += amount - counted
                rest.entries.append(position)
            continue
        fee = 0
        if fees_account is not None:
            fee = sum(x for a, s, x in payload.get("legs", ()) if a == fees_account.pk and s == "C")
        node, gpu_model, seconds = "", "", 0
        if event_type == ev.HOLD_POSTED:
            subject = payload["hold_id"].rsplit(":w", 1)[0]
            for n, g, q in leases.get(subject, ()):
                node, gpu_model = n, g
                seconds += q
        target = line(node, gpu_model or "other")
        target.gpu_seconds += seconds
        target.gross_micros += amount
        target.fee_micros += fee
        target.entries.append(position)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM("
            "CASE WHEN side = 'C' THEN amount_micros ELSE -amount_micros END), 0) "
            "FROM billing_posting WHERE account_id = %s AND recorded_at < %s",
            [payable.pk, end],
        )
        closing = int(cursor.fetchone()[0])
    ordered = sorted(lines.values(), key=lambda x: (x.node, x.gpu_model))
    return Statement(provider.pk, currency, period, ordered, payouts, closing)


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
    """Write (or rewrite) every provider's statement for the month; return how many."""
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
    written = 0
    for provider in Organization.objects.filter(pk__in=provider_ids).order_by("pk"):
        statement = statement_compute(provider=provider, period=period, currency=currency)
        with transaction.atomic():
            ProviderStatement.objects.update_or_create(
                key=statement_key(provider.pk, period, currency),
                defaults={
                    "organization": provider,
                    "currency": currency,
                    "period_start": start,
                    "period_end": end,
                    "gpu_seconds": statement.gpu_seconds,
                    "gross_micros": statement.gross_micros,
                    "fee_micros": statement.fee_micros,
                    "net_payable_micros": statement.gross_micros,
                    "payouts_micros": statement.payouts_micros,
                    "closing_balance_micros": statement.closing_balance_micros,
                    "document": statement_document(statement, provider),
                    "generated_at": now,
                },
            )
        written += 1
    return written
