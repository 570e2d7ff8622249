"""Accrual: rated usage summed per journal entry and invoice line, as usage arrives.

The ``billing.accrual`` follower follows metering's ``UsageRecorded`` events, as
rating does, and for each batch:

1. loads the batch's rows with the dimensions invoices and statements group by
   (job, model, training type, GPU model, region, node);
2. rates each row as ``billing.rating.rate_usage`` does — the function rating used,
   with the price in force when the row's usage happened, so the amounts are the
   ledger's to the micro-unit;
3. finds the journal entry rating posted for each (buyer, provider) group of the
   batch (``usage:<first row id>``) and checks that the group's amounts add up to
   what the entry charged the buyer; rows rating left out (GPU-seconds of a lease
   billed by settling its hold) accrue with no entry, for statements and reports;
4. writes one ``UsageAccrual`` row per (entry, line key) — a few per batch.

It runs after rating: a batch rating has not reached yet is rated first, in the same
transaction (both followers are exactly-once, so whichever commits first wins).

Closing a period then reads these rows (thousands per month per busy buyer) rather
than the usage events (millions): see invoicing.calculations and bench/close.py.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime

from django.conf import settings
from django.db import connection

from core.db import as_utc, copy_statement, is_postgres, server_cursor
from core.eventstore import RecordedEvent
from core.followers import Follower, follower_position, follower_run_once, register
from core.models import Event
from invoicing.models import UsageAccrual
from ledger import events as ev
from ledger.models import Account
from metering import events as metering_events
from metering.models import UsageEvent
from pricing.selectors import rate_for
from pricing.services import leases_settled_by_hold, rate_quantity, usage_rating, usage_transfer_id

USAGE_TABLE = UsageEvent._meta.db_table
_DIMS = (
    "model",
    "training_type",
    "provider",
    "lease_price_micros_per_hour",
    "gpu_model",
    "region",
    "node",
    "service_tier",  # "batch": a batch's tokens, at the batch discount
)
PRODUCT_OF = {
    "tokens.training": "fine_tune",
    "tokens.evaluation": "fine_tune",
    "tokens.prompt": "inference",
    "tokens.completion": "inference",
    "gpu.seconds": "gpu_lease",
}


class AccrualMismatch(RuntimeError):
    """The batch's rated amounts disagree with the journal entry rating posted: the
    follower stops here, loudly, rather than invoice a number the ledger does not hold."""


@dataclass(slots=True)
class _Row:
    id: int
    buyer_id: int
    type: str
    quantity: int
    occurred_at: datetime
    period: date
    subject: str
    dims: dict[str, str | int]


def _rows(ranges: list[list[int]]) -> list[_Row]:
    where = " OR ".join(["id BETWEEN %s AND %s"] * len(ranges))
    params = [bound for run in ranges for bound in (run[0], run[1])]
    extracted = ", ".join(f"dimensions ->> '{name}'" for name in _DIMS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, buyer_id, type, quantity, occurred_at, period, subject_id, {extracted} "
            f"FROM {USAGE_TABLE} WHERE {where} ORDER BY id",
            params,
        )
        found = cursor.fetchall()
    rows: list[_Row] = []
    for row_id, buyer, usage_type, quantity, occurred_at, period, subject, *dims in found:
        occurred_at = as_utc(occurred_at)
        if isinstance(period, str):
            period = date.fromisoformat(period)
        values: dict[str, str | int] = {
            n: v for n, v in zip(_DIMS, dims, strict=True) if v is not None
        }
        if "provider" in values:
            values["provider"] = int(values["provider"])
        if "lease_price_micros_per_hour" in values:
            values["lease_price_micros_per_hour"] = int(values["lease_price_micros_per_hour"])
        rows.append(_Row(row_id, buyer, usage_type, quantity, occurred_at, period, subject, values))
    return rows


def _lease_settled(rows: list[_Row]) -> set[str]:
    """Lease subjects billed by settling their holds (rating leaves them out)."""
    subjects = {r.subject for r in rows if r.type == "gpu.seconds"}
    if not subjects:
        return set()
    return leases_settled_by_hold(subjects)


def _entry_debits(transfer_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """transfer id → (entry position, buyer debit total, of which from prepaid credit)."""
    if not transfer_ids:
        return {}
    events = Event.objects.filter(
        stream_id__in=[ev.entry_stream_id(t) for t in transfer_ids], version=1
    ).values_list("position", "payload")
    found: dict[str, tuple[int, int, int]] = {}
    accounts: set[int] = set()
    payloads = list(events)
    for _, payload in payloads:
        accounts.update(leg[0] for leg in payload["legs"] if leg[1] == "D")
    kinds = dict(Account.objects.filter(pk__in=accounts).values_list("pk", "kind"))
    for position, payload in payloads:
        debit = credit = 0
        for account_id, side, amount in payload["legs"]:
            if side != "D":
                continue
            if kinds.get(account_id) in (Account.Kind.CREDIT, Account.Kind.RECEIVABLE):
                debit += amount
                if kinds[account_id] == Account.Kind.CREDIT:
                    credit += amount
        found[payload["transfer_id"]] = (position, debit, credit)
    return found


def accrue_batch(event: RecordedEvent) -> int:
    """Accrue one UsageRecorded batch; return the accrual rows written."""
    while follower_position(usage_rating.name) < event.position:
        if not follower_run_once(usage_rating):
            break
    rows = _rows(event.payload["usage_ranges"])
    if not rows:
        return 0
    settled = _lease_settled(rows)
    currency = settings.TANDEM_CURRENCY
    # The groups rating made: (buyer, provider) in the order of their first row.
    group_first: dict[tuple[int, int | None], int] = {}
    group_amount: dict[tuple[int, int | None], int] = defaultdict(int)
    rated_rows = []
    for row in rows:
        rate = rate_for(row.type, row.dims, row.occurred_at)
        rated = rate_quantity(rate, row.quantity, row.dims)
        billed_by_rating = not (row.type == "gpu.seconds" and row.subject in settled)
        group = (row.buyer_id, rated.provider_id)
        if billed_by_rating:
            group_first.setdefault(group, row.id)
            group_amount[group] += rated.amount_micros
        rated_rows.append((row, rated, rate, group if billed_by_rating else None))
    transfer_of = {
        group: usage_transfer_id(first)
        for group, first in group_first.items()
        if group_amount[group] > 0
    }
    entries = _entry_debits(sorted(transfer_of.values()))
    for group, transfer_id in transfer_of.items():
        found = entries.get(transfer_id)
        if found is None:
            raise AccrualMismatch(f"{event.stream_id}: rating posted no entry {transfer_id}")
        if found[1] != group_amount[group]:
            raise AccrualMismatch(
                f"{event.stream_id}: entry {transfer_id} charged {found[1]}, "
                f"the rows rate to {group_amount[group]}"
            )
    sums: dict[tuple, list] = {}
    for row, rated, rate, billed_group in rated_rows:
        transfer_id = transfer_of.get(billed_group, "") if billed_group is not None else ""
        dims = row.dims
        provider = dims.get("provider") if row.type == "gpu.seconds" else None
        key = (
            row.buyer_id,
            row.period,
            transfer_id,
            row.type,
            row.subject
            if row.type.startswith("tokens.training")
            or row.type == "tokens.evaluation"
            or row.type == "gpu.seconds"
            else "",
            str(dims.get("model", "")),
            str(dims.get("training_type", "")) if PRODUCT_OF.get(row.type) == "fine_tune" else "",
            str(dims.get("gpu_model", "")),
            str(dims.get("region", "")),
            str(dims.get("node", "")),
            provider,
            rate.rate_micros,
            rate.unit,
            rate.fee_bps,
        )
        accrual = sums.get(key)
        if accrual is None:
            # In _COLUMNS' order; the five sums start at _SUMS.
            accrual = sums[key] = [
                row.buyer_id,
                row.period,
                currency,
                transfer_id,
                PRODUCT_OF.get(row.type, "other"),
                row.type,
                key[4],
                key[5][:200],
                key[6][:32],
                key[7][:100],
                key[8][:64],
                key[9][:200],
                provider,
                rate.rate_micros,
                rate.unit,
                rate.fee_bps,
                0,
                0,
                0,
                0,
                0,
                row.id,
                event.position,
            ]
        accrual[_SUMS] += 1
        accrual[_SUMS + 1] += row.quantity
        accrual[_SUMS + 2] += rated.amount_micros
        accrual[_SUMS + 3] += rated.provider_micros
        accrual[_SUMS + 4] += rated.fee_micros
    _accruals_write(list(sums.values()))
    return len(sums)


_COLUMNS = (
    "buyer_id",
    "period",
    "currency",
    "transfer_id",
    "product",
    "usage_type",
    "subject",
    "model",
    "training_type",
    "gpu_model",
    "region",
    "node",
    "provider_id",
    "rate_micros",
    "rate_unit",
    "fee_bps",
    "events",
    "quantity",
    "amount_micros",
    "provider_micros",
    "fee_micros",
    "first_usage_id",
    "batch_position",
)
_SUMS = _COLUMNS.index("events")


def _accruals_write(rows: list[list]) -> None:
    """One COPY on PostgreSQL (a model instance per row cost most of a batch's
    accrual); ``bulk_create`` elsewhere."""
    if not is_postgres():
        UsageAccrual.objects.bulk_create(
            [UsageAccrual(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]
        )
        return
    with connection.wrap_database_errors:
        cursor = server_cursor()
        with cursor.copy(copy_statement(UsageAccrual, _COLUMNS)) as copy:
            for row in rows:
                copy.write_row(row)


class UsageAccruals(Follower):
    name = "billing.accrual"
    stream_types = (metering_events.USAGE_STREAM,)
    batch_size = 1  # one usage event names up to a thousand rows

    def handle(self, event: RecordedEvent) -> None:
        if event.type == metering_events.USAGE_RECORDED:
            accrue_batch(event)


usage_accruals = register(UsageAccruals())
