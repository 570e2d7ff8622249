"""What an invoice bills, computed from the books as of one event-store position:
the month's usage accruals grouped into lines by product, model and price, the
ledger charges that are not usage (fees, minimums, adjustments), and what prepaid
credit already paid. ``invoice_compute`` for one buyer, ``_compute_monthly`` for
many at once (the month close), both giving the same ``Computed``.

Per-invoice work is batched: one query per kind of row for a whole chunk of
buyers, so the month close holds its ratio to a plain GROUP BY (bench/close.py)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import connection
from django.db.models import Max
from django.utils import timezone

from core.db import (
    is_postgres,
    server_cursor,
)
from core.errors import InvalidInput
from core.models import Event, Organization
from core.money import Money, rate_amount
from invoicing.models import (
    Invoice,
    UsageAccrual,
)
from invoicing.periods import minimum_transfer_id, month_bounds
from ledger import events as ev
from ledger.models import Account, Posting
from pricing.selectors import BPS, SECONDS_PER_HOUR, TOKENS_UNIT

PRODUCT_ORDER = {"fine_tune": 0, "inference": 1, "gpu_lease": 2, "other": 3}
CHARGE_KINDS = {Account.Kind.REVENUE, Account.Kind.FEES, Account.Kind.PAYABLE}
BUYER_KINDS = (Account.Kind.CREDIT, Account.Kind.RECEIVABLE)


# --- computing an invoice ---------------------------------------------------------


@dataclass(slots=True)
class _Line:
    product: str
    description: str
    unit: str
    price_unit: int
    unit_price_micros: int
    job: str = ""
    model: str = ""
    gpu_model: str = ""
    region: str = ""
    quantity: int = 0
    exact_micros: int = 0
    entries: dict[str, int] = field(default_factory=dict)  # transfer id -> amount

    def copy(self) -> _Line:
        """A line like this one, with entries of its own."""
        return _Line(
            self.product,
            self.description,
            self.unit,
            self.price_unit,
            self.unit_price_micros,
            self.job,
            self.model,
            self.gpu_model,
            self.region,
            self.quantity,
            self.exact_micros,
            dict(self.entries),
        )

    def sort_key(self) -> tuple:
        return (
            PRODUCT_ORDER[self.product],
            self.job,
            self.model,
            self.gpu_model,
            self.description,
            self.unit_price_micros,
        )


@dataclass(slots=True)
class Computed:
    lines: list[_Line]
    exact_micros: int
    prepaid_micros: int  # of the exact amount, what prepaid credit paid when it was charged
    positions: dict[str, int]  # transfer id -> entry position
    as_of_position: int
    # The lines as the document shows them, as canonical JSON (``_document_lines_json``),
    # when made ahead.
    document_lines_json: bytes | None = None


def _accruals(
    organization: Organization, currency: str, as_of: int, *, period: date | None, job: str | None
):
    query = UsageAccrual.objects.filter(
        buyer_id=organization.pk, currency=currency, batch_position__lte=as_of
    ).exclude(transfer_id="")
    if job is not None:
        return query.filter(product="fine_tune", subject=job)
    if period is None:
        raise InvalidInput("a monthly invoice needs its period", details={"field": "period"})
    query = query.filter(period=period)
    invoiced_jobs = _jobs_invoiced_alone(organization, currency)
    if invoiced_jobs:
        query = query.exclude(product="fine_tune", subject__in=invoiced_jobs)
    return query


def _jobs_invoiced_alone(organization: Organization, currency: str) -> list[str]:
    return list(
        Invoice.objects.filter(organization=organization, currency=currency, kind=Invoice.Kind.JOB)
        .exclude(status=Invoice.Status.DRAFT)
        .values_list("job", flat=True)
    )


def _usage_line_key(a: UsageAccrual) -> tuple:
    if a.product == "fine_tune":
        return ("fine_tune", a.subject, a.model, a.training_type, a.rate_micros)
    if a.product == "inference":
        return ("inference", a.model, a.usage_type.split(".", 1)[1], a.rate_micros)
    return ("gpu_lease", a.gpu_model, a.rate_micros, a.fee_bps)


def _usage_line_new(a: UsageAccrual, currency: str) -> _Line:
    """The empty line an accrual's key opens (made once per key, not per accrual)."""
    if a.product == "fine_tune":
        return _Line(
            "fine_tune",
            f"Fine-tune {a.subject} · {a.model} · {a.training_type} "
            f"(training and evaluation tokens)",
            "tokens",
            TOKENS_UNIT,
            a.rate_micros,
            job=a.subject,
            model=a.model,
        )
    if a.product == "inference":
        kind = a.usage_type.split(".", 1)[1]
        return _Line(
            "inference",
            f"Inference · {a.model} · {kind} tokens",
            "tokens",
            TOKENS_UNIT,
            a.rate_micros,
            model=a.model,
        )
    buyer_rate = a.rate_micros + rate_amount(a.rate_micros, a.fee_bps, BPS)
    return _Line(
        "gpu_lease",
        f"GPU lease · {a.gpu_model or 'GPU'} at "
        f"{Money(a.rate_micros, currency).format()}/GPU-hour "
        f"+ {Decimal(a.fee_bps) / 100}% platform fee",
        "gpu_seconds",
        SECONDS_PER_HOUR,
        buyer_rate,
        gpu_model=a.gpu_model,
    )


def _usage_lines(
    accruals: Iterable[UsageAccrual],
    currency: str,
    opened: dict[tuple, _Line] | None = None,
) -> dict[tuple, _Line]:
    """The usage lines of these accruals. ``opened``: the empty line of each key met
    so far (shared by the orgs of a close, whose lines repeat the same few keys)."""
    if opened is None:
        opened = {}
    lines: dict[tuple, _Line] = {}
    for a in accruals:
        key = _usage_line_key(a)
        line = lines.get(key)
        if line is None:
            empty = opened.get(key)
            if empty is None:
                empty = opened[key] = _usage_line_new(a, currency)
            line = lines[key] = empty.copy()
        line.quantity += a.quantity
        line.exact_micros += a.amount_micros
        line.entries[a.transfer_id] = line.entries.get(a.transfer_id, 0) + a.amount_micros
    return lines


@dataclass(frozen=True, slots=True)
class _Charge:
    position: int
    transfer_id: str
    kind: str
    description: str
    amount_micros: int  # debited to the buyer
    from_credit_micros: int
    hold_id: str


def buyer_accounts(organization_id: int, currency: str) -> dict[int, str]:
    return dict(
        Account.objects.filter(
            organization_id=organization_id, currency=currency, kind__in=BUYER_KINDS
        ).values_list("pk", "kind")
    )


def _ledger_charges(
    organization: Organization, currency: str, start: datetime, end: datetime, as_of: int
) -> list[_Charge]:
    """Journal entries in ``[start, end)`` that charged the buyer for something sold
    (a credit leg to revenue, fees or a payable), other than rated usage."""
    mine = buyer_accounts(organization.pk, currency)
    return _ledger_charges_many({organization.pk: mine}, start, end, as_of).get(organization.pk, [])


def _ledger_charges_many(
    mine_by_org: dict[int, dict[int, str]], start: datetime, end: datetime, as_of: int
) -> dict[int, list[_Charge]]:
    """``_ledger_charges`` of many orgs in four queries: org -> its charges."""
    owner = {account: org for org, mine in mine_by_org.items() for account in mine}
    if not owner:
        return {}
    positions_of: dict[int, set[int]] = defaultdict(set)
    in_accounts, accounts_params = _any(sorted(owner))
    for account, position in _select(
        f"SELECT DISTINCT account_id, entry_position FROM {Posting._meta.db_table} "
        f"WHERE account_id {in_accounts} AND side = 'D' AND recorded_at >= %s "
        "AND recorded_at < %s AND entry_position <= %s",
        [*accounts_params, start, end, as_of],
    ):
        positions_of[owner[account]].add(position)
    if not positions_of:
        return {}
    events = {
        position: (event_type, payload)
        for position, event_type, payload in _events_not_usage(
            sorted(set().union(*positions_of.values()))
        )
    }
    legs_accounts = {leg[0] for _, payload in events.values() for leg in payload.get("legs", ())}
    kinds: dict[int, str] = {}
    for accounts in _chunks(sorted(legs_accounts)):
        kinds.update(Account.objects.filter(pk__in=accounts).values_list("pk", "kind"))
    found: dict[int, list[_Charge]] = {}
    for org, positions in positions_of.items():
        mine = mine_by_org[org]
        charges = []
        for position in sorted(positions):
            if position not in events:
                continue  # rated usage: the accrual lines carry it
            event_type, payload = events[position]
            charge = _charge_of(position, event_type, payload, mine, kinds)
            if charge is not None:
                charges.append(charge)
        found[org] = charges
    return found


def _events_not_usage(positions: list[int]) -> list[tuple[int, str, dict]]:
    """(position, type, payload) of these events, but rating's entries (``usage:…``),
    which the accruals carry: on PostgreSQL they are left out by the query."""
    found: list[tuple[int, str, dict]] = []
    if is_postgres():
        wanted, wanted_params = _any(positions)
        for position, event_type, payload in _select(
            f"SELECT position, type, payload FROM {Event._meta.db_table} "
            f"WHERE position {wanted} "
            "AND coalesce(payload ->> 'transfer_id', '') NOT LIKE 'usage:%%' "
            "ORDER BY position",
            wanted_params,
        ):
            found.append(
                (position, event_type, json.loads(payload) if isinstance(payload, str) else payload)
            )
        return found
    for chunk in _chunks(positions):
        for position, event_type, payload in Event.objects.filter(position__in=chunk).values_list(
            "position", "type", "payload"
        ):
            if not str(payload.get("transfer_id") or "").startswith("usage:"):
                found.append((position, event_type, payload))
    return sorted(found, key=lambda row: row[0])


def _charge_of(
    position: int, event_type: str, payload: dict, mine: dict[int, str], kinds: dict[int, str]
) -> _Charge | None:
    """What one journal entry charged the buyer (its accounts ``mine``) for something
    sold; None when it charged nothing (or is rated usage)."""
    transfer_id = payload.get("transfer_id") or f"hold:{payload.get('hold_id', '')}"
    if transfer_id.startswith("usage:"):
        return None  # rated usage: the accrual lines carry it
    legs = payload.get("legs", ())
    if not any(
        side == "C" and a not in mine and kinds.get(a) in CHARGE_KINDS for a, side, _ in legs
    ):
        return None
    amount = sum(x for a, side, x in legs if side == "D" and a in mine)
    from_credit = sum(
        x for a, side, x in legs if side == "D" and mine.get(a) == Account.Kind.CREDIT
    )
    # A charge reversed within the same entry (credit back to the buyer) nets out.
    amount -= sum(x for a, side, x in legs if side == "C" and a in mine)
    if amount <= 0:
        return None
    hold_id = payload.get("hold_id", "") if event_type == ev.HOLD_POSTED else ""
    return _Charge(
        position,
        transfer_id,
        payload.get("kind", "hold") if event_type == ev.ENTRY_POSTED else "lease",
        payload.get("description", ""),
        amount,
        min(from_credit, amount),
        hold_id,
    )


def _chunks(values: list, size: int = 5000) -> Iterable[list]:
    """Slices small enough for an IN list on every database (SQLite caps parameters)."""
    for offset in range(0, len(values), size):
        yield values[offset : offset + size]


def _any(values: list[Any]) -> tuple[str, list[Any]]:
    """``= ANY(%s)`` with the list as one array parameter on PostgreSQL (bound
    server-side, however long: a Django IN list of thousands of ids costs more to
    build than the query to run); an IN list elsewhere."""
    if not values:
        return "IN (NULL)", []  # matches nothing
    if is_postgres():
        # Spelled as an array literal here: psycopg adapts a list element by element,
        # five times slower for the tens of thousands of ids a close passes.
        if all(type(v) is int for v in values):
            return "= ANY(%s::bigint[])", ["{" + ",".join(map(str, values)) + "}"]
        if all(type(v) is str for v in values):
            quoted = ",".join(
                '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values
            )
            return "= ANY(%s::text[])", ["{" + quoted + "}"]
        return "= ANY(%s)", [values]
    return f"IN ({', '.join(['%s'] * len(values))})", list(values)


def _select(sql: str, params: list[Any]) -> list[tuple]:
    """The rows of a query written with ``_any``'s fragments."""
    if is_postgres():
        with connection.wrap_database_errors:
            cursor = server_cursor()
            cursor.execute(sql, params)
            return cursor.fetchall()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _lease_gpu_models(organization_id: int, subjects: set[str]) -> dict[str, tuple[str, int]]:
    """lease subject -> (GPU model, GPU-seconds metered) from the usage rating left out."""
    return _lease_gpu_models_many({organization_id: subjects}).get(organization_id, {})


def _lease_gpu_models_many(
    subjects_by_org: dict[int, set[str]],
) -> dict[int, dict[str, tuple[str, int]]]:
    found: dict[int, dict[str, tuple[str, int]]] = {}
    wanted = {(org, s) for org, subjects in subjects_by_org.items() for s in subjects}
    if not wanted:
        return found
    rows = (
        UsageAccrual.objects.filter(
            buyer_id__in=sorted({org for org, _ in wanted}),
            product="gpu_lease",
            transfer_id="",
            subject__in=sorted({s for _, s in wanted}),
        )
        .values_list("buyer_id", "subject", "gpu_model", "quantity")
        .order_by("buyer_id", "subject", "id")
    )
    for org, subject, gpu_model, quantity in rows:
        if (org, subject) not in wanted:
            continue
        mine = found.setdefault(org, {})
        model, seconds = mine.get(subject, (gpu_model, 0))
        mine[subject] = (model, seconds + quantity)
    return found


def _charge_lines(
    organization_id: int,
    charges: list[_Charge],
    currency: str,
    gpu: dict[str, tuple[str, int]] | None = None,
) -> dict[tuple, _Line]:
    lines: dict[tuple, _Line] = {}
    if gpu is None:
        lease_subjects = {c.hold_id.rsplit(":w", 1)[0] for c in charges if c.hold_id}
        gpu = _lease_gpu_models(organization_id, lease_subjects)
    seconds_counted: set[str] = set()
    for charge in charges:
        subject = charge.hold_id.rsplit(":w", 1)[0] if charge.hold_id else ""
        if subject and subject in gpu:
            gpu_model, seconds = gpu[subject]
            key: tuple = ("gpu_lease", gpu_model, "settled")
            line = lines.get(key) or _Line(
                "gpu_lease",
                f"GPU lease · {gpu_model or 'GPU'} (settled lease time, platform fee included)",
                "gpu_seconds",
                SECONDS_PER_HOUR,
                0,
                gpu_model=gpu_model,
            )
            if subject not in seconds_counted:
                line.quantity += seconds
                seconds_counted.add(subject)
        elif charge.transfer_id.startswith("ftmin:"):
            job = charge.transfer_id.split(":", 2)[2]
            key = ("fine_tune", job, "minimum")
            line = lines.get(key) or _Line(
                "fine_tune", f"Fine-tune {job} · minimum charge per job", "item", 1, 0, job=job
            )
            line.quantity = 1
        elif charge.hold_id:
            key = ("gpu_lease", "", "settled")
            line = lines.get(key) or _Line(
                "gpu_lease",
                "GPU lease (settled lease time, platform fee included)",
                "item",
                1,
                0,
            )
            line.quantity += 1
        else:
            description = (charge.description or charge.kind or "charge")[:250]
            key = ("other", description)
            line = lines.get(key) or _Line("other", description, "item", 1, 0)
            line.quantity += 1
        lines[key] = line
        line.exact_micros += charge.amount_micros
        line.entries[charge.transfer_id] = (
            line.entries.get(charge.transfer_id, 0) + charge.amount_micros
        )
    for line in lines.values():
        if line.unit == "gpu_seconds" and line.quantity:
            line.unit_price_micros = rate_amount(line.exact_micros, SECONDS_PER_HOUR, line.quantity)
        elif line.unit == "item" and line.quantity:
            line.unit_price_micros = rate_amount(line.exact_micros, 1, line.quantity)
    return lines


def _entry_facts(transfer_ids: Iterable[str]) -> dict[str, tuple[int, list[tuple[int, str, int]]]]:
    """transfer id -> (entry position, its debit legs: (account, "D", amount))."""
    wanted = sorted(set(transfer_ids))
    stream_ids = [
        ev.hold_stream_id(t[5:]) if t.startswith("hold:") else ev.entry_stream_id(t) for t in wanted
    ]
    facts: dict[str, tuple[int, list[tuple[int, str, int]]]] = {}
    if is_postgres():
        # The legs taken apart by the server: no payload crosses to be parsed here
        # (a close reads tens of thousands of entries).
        streams, streams_params = _any(stream_ids)
        for position, stream_id, account, amount in _select(
            f"""SELECT e.position, e.stream_id, (l ->> 0)::bigint, (l ->> 2)::bigint
                  FROM {Event._meta.db_table} e
                  LEFT JOIN LATERAL jsonb_array_elements(e.payload -> 'legs') l ON l ->> 1 = 'D'
                 WHERE e.stream_id {streams} AND e.type IN (%s, %s)""",
            [*streams_params, ev.ENTRY_POSTED, ev.HOLD_POSTED],
        ):
            # entry:<transfer id> or hold:<hold id>, whose transfer id is hold:<hold id>
            transfer_id = stream_id if stream_id.startswith("hold:") else stream_id[6:]
            found = facts.get(transfer_id)
            if found is None:
                found = facts[transfer_id] = (position, [])
            if account is not None:
                found[1].append((account, "D", amount))
        return facts
    for chunk in _chunks(stream_ids):
        rows = Event.objects.filter(
            stream_id__in=chunk, type__in=(ev.ENTRY_POSTED, ev.HOLD_POSTED)
        ).values_list("position", "payload")
        for position, payload in rows:
            transfer_id = payload.get("transfer_id") or f"hold:{payload['hold_id']}"
            facts[transfer_id] = (position, [tuple(leg) for leg in payload["legs"]])
    return facts


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


def _ordered(lines: dict[tuple, _Line]) -> list[_Line]:
    return sorted((line for line in lines.values() if line.exact_micros), key=_Line.sort_key)


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
    charges_by_org = _ledger_charges_many(mine_by_org, start, end, as_of)
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
    facts = _entry_facts(t for lines in ordered.values() for line in lines for t in line.entries)
    return {org: _computed(ordered[org], facts, mine_by_org.get(org, {}), as_of) for org in org_ids}
