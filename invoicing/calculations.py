"""What an invoice bills, computed from the books as of one event-store position:
the month's usage accruals grouped into lines by product, model and price, the
ledger charges that are not usage (fees, minimums, adjustments), and what prepaid
credit already paid. ``invoice_compute`` for one buyer, ``_compute_monthly`` for
many at once (the month close), both giving the same ``Computed``.

Per-invoice work is batched: one query per kind of row for a whole chunk of
buyers, so the month close holds its ratio to a plain GROUP BY (bench/close.py).

The parts: the lines and ``Computed`` in ``lines``, usage lines in ``usage_lines``,
the ledger charges that are not usage in ``charges``, the batched SQL in ``queries``;
this module puts them together."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from django.db.models import Max
from django.utils import timezone

from core.models import Event, Organization
from invoicing.charges import (
    BUYER_KINDS,
    _charge_lines,
    _entry_facts,
    _lease_gpu_models_many,
    _ledger_charges,
    _ledger_charges_many,
    buyer_accounts,
)
from invoicing.lines import Computed, _Line, _ordered
from invoicing.models import Invoice, UsageAccrual
from invoicing.periods import minimum_transfer_id, month_bounds
from invoicing.queries import _any, _select
from invoicing.usage_lines import _accruals, _usage_lines
from ledger.models import Account


def invoice_compute(
    *,
    organization: Organization,
    currency: str,
    period: date | None = None,
    job: str | None = None,
    as_of_position: int | None = None,
) -> Computed:
    """What a monthly (``period``) or job (``job``) invoice of this org holds, from the
    journal as of ``as_of_position`` (default: everything committed)."""
    as_of = as_of_position
    if as_of is None:
        as_of = Event.objects.aggregate(p=Max("position"))["p"] or 0
    if period is not None and job is None:
        return _compute_monthly([organization.pk], currency, period, as_of)[organization.pk]
    lines = _usage_lines(
        _accruals(organization, currency, as_of, period=period, job=job).order_by("id"), currency
    )
    charges = [
        c
        for c in _ledger_charges(
            organization,
            currency,
            datetime(2000, 1, 1, tzinfo=UTC),
            timezone.now() + timedelta(days=1),
            as_of,
        )
        if c.transfer_id == minimum_transfer_id(organization.pk, job or "")
    ]
    lines.update(_charge_lines(organization.pk, charges, currency))
    ordered = _ordered(lines)
    facts = _entry_facts(t for line in ordered for t in line.entries)
    return _computed(ordered, facts, buyer_accounts(organization.pk, currency), as_of)


def _computed(
    ordered: list[_Line], facts: dict[str, tuple], mine: dict[int, str], as_of: int
) -> Computed:
    # Prepaid credit that paid for these charges when they were posted: each entry's
    # share from the credit account, pro rata where an entry spans two invoices.
    share: dict[str, int] = defaultdict(int)
    for line in ordered:
        for transfer_id, amount in line.entries.items():
            share[transfer_id] += amount
    prepaid = 0
    positions = {}
    for transfer_id, amount in share.items():
        position, legs = facts[transfer_id]
        positions[transfer_id] = position
        debit = sum(x for a, s, x in legs if s == "D" and a in mine)
        credit = sum(x for a, s, x in legs if s == "D" and mine.get(a) == Account.Kind.CREDIT)
        credit = min(credit, debit)
        prepaid += credit if amount >= debit else credit * amount // max(debit, 1)
    exact = sum(line.exact_micros for line in ordered)
    return Computed(ordered, exact, prepaid, positions, as_of)


class _AccrualRow(NamedTuple):
    """The fields of an accrual row that _usage_lines reads."""

    buyer_id: int
    product: str
    usage_type: str
    subject: str
    model: str
    training_type: str
    gpu_model: str
    rate_micros: int
    fee_bps: int
    quantity: int
    amount_micros: int
    transfer_id: str


_ACCRUAL_FIELDS = _AccrualRow._fields


def _jobs_alone(org_ids: list[int], currency: str) -> dict[int, set[str]]:
    """org -> the fine-tune jobs invoiced on their own (left out of its months)."""
    found: dict[int, set[str]] = defaultdict(set)
    orgs, orgs_params = _any(sorted(org_ids))
    for org, job in _select(
        f"SELECT organization_id, job FROM {Invoice._meta.db_table} "
        f"WHERE organization_id {orgs} AND currency = %s AND kind = %s AND status <> %s",
        [*orgs_params, currency, Invoice.Kind.JOB, Invoice.Status.DRAFT],
    ):
        found[org].add(job)
    return found


def _compute_monthly(
    org_ids: list[int],
    currency: str,
    period: date,
    as_of: int,
    jobs_alone: dict[int, set[str]] | None = None,
) -> dict[int, Computed]:
    """The monthly invoices of many orgs as of one position, in a fixed number of
    queries whatever the number of orgs: org -> what ``invoice_compute`` gives.
    ``jobs_alone``: what ``_jobs_alone`` gives for these orgs, if read already."""
    start, end = month_bounds(period)
    if jobs_alone is None:
        jobs_alone = _jobs_alone(org_ids, currency)
    accruals: dict[int, list] = defaultdict(list)
    mine_by_org: dict[int, dict[int, str]] = defaultdict(dict)
    orgs, orgs_params = _any(sorted(org_ids))
    for row in map(
        _AccrualRow._make,
        _select(
            f"SELECT {', '.join(_ACCRUAL_FIELDS)} FROM {UsageAccrual._meta.db_table} "
            f"WHERE buyer_id {orgs} AND currency = %s AND batch_position <= %s "
            "AND period = %s AND transfer_id <> '' ORDER BY id",
            [*orgs_params, currency, as_of, period],
        ),
    ):
        if row.product == "fine_tune" and row.subject in jobs_alone.get(row.buyer_id, ()):
            continue  # invoiced on its own
        accruals[row.buyer_id].append(row)
    kinds, kinds_params = _any([kind.value for kind in BUYER_KINDS])
    for org, pk, kind in _select(
        f"SELECT organization_id, id, kind FROM {Account._meta.db_table} "
        f"WHERE organization_id {orgs} AND currency = %s AND kind {kinds}",
        [*orgs_params, currency, *kinds_params],
    ):
        mine_by_org[org][pk] = kind
    # The usage entries' facts first: their positions are entries the charges need
    # not read again (rated usage charges nothing there).
    facts = _entry_facts(row.transfer_id for rows in accruals.values() for row in rows)
    rated = [position for position, _ in facts.values()]
    charges_by_org = _ledger_charges_many(mine_by_org, start, end, as_of, rated)
    for org, charges in charges_by_org.items():
        alone = jobs_alone.get(org) or set()
        charges_by_org[org] = [
            c
            for c in charges
            if not (c.transfer_id.startswith("ftmin:") and c.transfer_id.split(":", 2)[2] in alone)
        ]
    gpu = _lease_gpu_models_many(
        {
            org: {c.hold_id.rsplit(":w", 1)[0] for c in charges if c.hold_id}
            for org, charges in charges_by_org.items()
        }
    )
    ordered: dict[int, list[_Line]] = {}
    opened: dict[tuple, _Line] = {}
    for org in org_ids:
        lines = _usage_lines(accruals.get(org, ()), currency, opened)
        if charges_by_org.get(org):
            lines.update(_charge_lines(org, charges_by_org[org], currency, gpu.get(org, {})))
        ordered[org] = _ordered(lines)
    missing = {
        t for lines in ordered.values() for line in lines for t in line.entries if t not in facts
    }
    if missing:
        facts.update(_entry_facts(missing))
    return {org: _computed(ordered[org], facts, mine_by_org.get(org, {}), as_of) for org in org_ids}
