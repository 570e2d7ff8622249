"""A provider's earnings over any period, by day, by node and by offer: the same
attribution as its monthly statement (``invoicing.statements``), per posting.

Every credit to the provider's ``payable`` account in ``[since, until)`` is one
earning, counted on the day it was posted. Rated GPU time (``usage:<id>``) is split
by the usage accruals of that entry (node, GPU model, the lease it was used on, the
GPU-seconds, the platform fee); a settled lease hold (``hold:<lease>:w<n>``) is the
lease's, its node and GPU-seconds from the lease's metered usage and its fee from
the entry's ``fees`` leg. The lease names the offer it was leased from. What no
accrual explains is listed as unattributed, so every view adds up to the payable.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from core.models import Event, Organization
from invoicing.models import UsageAccrual
from invoicing.queries import _any, _select
from ledger import events as ev
from ledger.models import Account, Posting
from marketplace.models import Lease

UNATTRIBUTED = "unattributed"
LEASE_PREFIX = "lease-"


@dataclass(slots=True)
class EarningsRow:
    """One day, node or offer: GPU time delivered, gross at lease prices (what is
    payable: the platform fee is paid by the buyer on top), the fee, and how many
    journal entries it adds up."""

    key: str
    label: str
    gpu_seconds: int = 0
    gross_micros: int = 0
    fee_micros: int = 0
    entries: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class ProviderEarnings:
    provider_id: int
    currency: str
    since: datetime
    until: datetime
    by_day: list[EarningsRow]  # oldest first
    by_node: list[EarningsRow]  # the largest first
    by_offer: list[EarningsRow]  # the largest first
    total: EarningsRow


def _lease_pk(subject: str) -> int | None:
    digits = subject.removeprefix(LEASE_PREFIX)
    if subject == digits or not digits.isdigit():
        return None
    return int(digits)


def provider_earnings_breakdown(
    *, provider: Organization, since: datetime, until: datetime, currency: str
) -> ProviderEarnings:
    """The provider's earnings in ``[since, until)``: seven queries whatever the
    period holds (the payable, its postings, their entries, the accruals of rated
    usage and of settled leases, the leases, the fees account)."""
    empty = ProviderEarnings(provider.pk, currency, since, until, [], [], [], _total([]))
    payable = Account.objects.filter(
        organization=provider, kind=Account.Kind.PAYABLE, currency=currency
    ).first()
    if payable is None:
        return empty
    postings = list(
        Posting.objects.filter(
            account=payable,
            side=Account.Side.CREDIT,
            recorded_at__gte=since,
            recorded_at__lt=until,
        )
        .order_by("entry_id", "pk")
        .values_list("entry_id", "recorded_at", "amount_micros")
    )
    if not postings:
        return empty
    positions, positions_params = _any(sorted({p for p, _, _ in postings}))
    # A rated entry's payload can hold thousands of legs: only its transfer id is read.
    entries: dict[int, tuple[str, str, dict[str, Any] | None]] = {}
    for position, event_type, transfer_id, payload in _select(
        "SELECT position, type, coalesce(payload ->> 'transfer_id', ''), "
        "CASE WHEN payload ->> 'transfer_id' LIKE 'usage:%%' THEN NULL ELSE payload END "
        f"FROM {Event._meta.db_table} WHERE position {positions}",
        positions_params,
    ):
        if isinstance(payload, str):
            payload = json.loads(payload)
        entries[position] = (event_type, transfer_id, payload)
    usage: dict[str, list[tuple[str, str, str, int, int, int]]] = defaultdict(list)
    transfer_ids = sorted({t for _, t, _ in entries.values() if t.startswith("usage:")})
    if transfer_ids:
        for row in UsageAccrual.objects.filter(
            transfer_id__in=transfer_ids, provider_id=provider.pk
        ).values_list(
            "transfer_id",
            "node",
            "gpu_model",
            "subject",
            "quantity",
            "provider_micros",
            "fee_micros",
        ):
            usage[row[0]].append(row[1:])
    held: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    subjects = sorted(
        {
            payload["hold_id"].rsplit(":w", 1)[0]
            for event_type, _, payload in entries.values()
            if event_type == ev.HOLD_POSTED and payload is not None
        }
    )
    if subjects:
        for subject, node, gpu_model, quantity in UsageAccrual.objects.filter(
            subject__in=subjects, provider_id=provider.pk, product="gpu_lease"
        ).values_list("subject", "node", "gpu_model", "quantity"):
            held[subject].append((node, gpu_model, quantity))
    lease_pks = {
        pk
        for pk in map(
            _lease_pk,
            [*subjects, *(row[2] for rows in usage.values() for row in rows)],
        )
        if pk is not None
    }
    offer_of = dict(
        Lease.objects.filter(pk__in=lease_pks, provider=provider).values_list("pk", "offer_id")
    )
    fees_account = (
        Account.objects.filter(organization=None, kind=Account.Kind.FEES, currency=currency)
        .values_list("pk", flat=True)
        .first()
    )
    days: dict[str, EarningsRow] = {}
    nodes: dict[str, EarningsRow] = {}
    offers: dict[str, EarningsRow] = {}

    def add(day: date, node: str, subject: str, seconds: int, gross: int, fee: int, position: int):
        offer = offer_of.get(_lease_pk(subject) or 0)
        for table, key, label in (
            (days, day.isoformat(), day.isoformat()),
            (nodes, node or UNATTRIBUTED, node or "Unattributed"),
            (
                offers,
                str(offer) if offer else UNATTRIBUTED,
                f"Offer {offer}" if offer else "Not from an offer",
            ),
        ):
            row = table.setdefault(key, EarningsRow(key, label))
            row.gpu_seconds += seconds
            row.gross_micros += gross
            row.fee_micros += fee
            row.entries.add(position)

    for position, recorded_at, amount in postings:
        day = recorded_at.date()
        event_type, transfer_id, payload = entries[position]
        if transfer_id.startswith("usage:"):
            counted = 0
            for node, _, subject, quantity, provider_micros, fee_micros in usage.get(
                transfer_id, ()
            ):
                add(day, node, subject, quantity, provider_micros, fee_micros, position)
                counted += provider_micros
            if counted != amount:
                add(day, "", "", 0, amount - counted, 0, position)
            continue
        payload = payload or {}
        fee = sum(x for a, s, x in payload.get("legs", ()) if a == fees_account and s == "C")
        node, subject, seconds = "", "", 0
        if event_type == ev.HOLD_POSTED:
            subject = payload["hold_id"].rsplit(":w", 1)[0]
            for n, _, q in held.get(subject, ()):
                node = n
                seconds += q
        add(day, node, subject, seconds, amount, fee, position)
    by_day = [days[k] for k in sorted(days)]
    return ProviderEarnings(
        provider.pk,
        currency,
        since,
        until,
        by_day,
        _largest_first(nodes),
        _largest_first(offers),
        _total(by_day),
    )


def _largest_first(rows: dict[str, EarningsRow]) -> list[EarningsRow]:
    return sorted(rows.values(), key=lambda r: (-r.gross_micros, r.key))


def _total(rows: list[EarningsRow]) -> EarningsRow:
    total = EarningsRow("total", "Total")
    for row in rows:
        total.gpu_seconds += row.gpu_seconds
        total.gross_micros += row.gross_micros
        total.fee_micros += row.fee_micros
        total.entries |= row.entries
    return total
