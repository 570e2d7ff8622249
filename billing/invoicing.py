"""Buyer invoices: drafts, finalization, the lifecycle after it, credit notes, and
closing a month for every organization.

What an invoice bills is what the ledger charged the buyer, never a second opinion:

- usage rated by billing.rating, read from the accrual projection (billing.accrual):
  one line per fine-tune job and price, per inference model and token kind, per GPU
  model and lease price; each line keeps the journal entries it carries
  (``InvoiceLineEntry``: entry position, transfer id, amount);
- other charges the journal holds against the buyer's credit or receivable that
  credit revenue, fees or a provider's payable (a lease hold settled, a fine-tune
  minimum, a finance correction), one line per GPU model or description.

Amounts: each line is the exact sum of its journal amounts (micro-units), rounded
half-even to the currency's minor unit; the difference goes to the platform's
``rounding`` account when the invoice is finalized, with the tax (the org's rate,
to ``tax_payable``) and the prepaid credit applied to what usage left owed — one
journal entry, ``invoice:<key>``. So the ledger agrees with every invoice to the cent.

Lifecycle: ``draft`` (recomputed on every refresh, until the period's grace ends)
→ ``open`` (finalized: immutable, numbered ``<issuer>-000042`` from a gap-free
sequence: the number is taken by locking the sequence row in the finalizing
transaction, so a failed finalization gives it back) → ``paid`` / ``void`` /
``uncollectible``, with ``past_due`` set by dunning. Corrections after
finalization are credit notes. Every step is an event on the stream
``invoice:<key>``; ``invoices_rebuild`` replays them, recomputes each finalized
invoice from the accruals and the journal as of its finalization, and checks the
result against the hash its InvoiceFinalized event recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Count, Max
from django.utils import timezone

from billing import events as ev
from billing.models import (
    Account,
    Balance,
    BillingProfile,
    CreditNote,
    DocumentSequence,
    Invoice,
    InvoiceLine,
    InvoiceLineEntry,
    Posting,
    UsageAccrual,
)
from billing.pricebook import fine_tune_quote
from billing.pricing import BPS, SECONDS_PER_HOUR, TOKENS_UNIT
from billing.services import (
    EntryRequest,
    account_open,
    ledger_execute,
    platform_account,
    raise_for,
)
from core.db import (
    RetryTransaction,
    copy_statement,
    is_postgres,
    retry_transaction,
    server_cursor,
)
from core.errors import Conflict, InvalidInput, NotFound
from core.eventstore import (
    CANONICAL_JSON,
    EVENTS_INSERT_CTE,
    EventRow,
    NewEvent,
    event_append,
    events_cte_rows_encoded,
    events_insert,
    json_text,
    stream_version,
)
from core.models import Event, FollowerPosition, Organization
from core.money import CURRENCIES, MICROS, Money, check_currency, rate_amount

logger = logging.getLogger(__name__)

INVOICE_STREAM = "billing.invoice"
INVOICE_FINALIZED = "InvoiceFinalized"
INVOICE_PAID = "InvoicePaid"
INVOICE_PAST_DUE = "InvoicePastDue"
INVOICE_UNCOLLECTIBLE = "InvoiceMarkedUncollectible"
INVOICE_VOIDED = "InvoiceVoided"
CREDIT_NOTE_ISSUED = "CreditNoteIssued"
PRODUCT_ORDER = {"fine_tune": 0, "inference": 1, "gpu_lease": 2, "other": 3}
CHARGE_KINDS = {Account.Kind.REVENUE, Account.Kind.FEES, Account.Kind.PAYABLE}
BUYER_KINDS = (Account.Kind.CREDIT, Account.Kind.RECEIVABLE)


# --- periods and keys -------------------------------------------------------------


def month_bounds(period: date) -> tuple[datetime, datetime]:
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    end = datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def parse_period(text: str) -> date:
    try:
        year, month = (int(part) for part in text.split("-"))
        return date(year, month, 1)
    except ValueError:
        raise InvalidInput(
            f"period must be a month as YYYY-MM, not {text!r}", details={"field": "period"}
        ) from None


def monthly_key(organization_id: int, period: date, currency: str) -> str:
    return f"monthly:{organization_id}:{period:%Y-%m}:{currency}"


def job_key(organization_id: int, job: str, currency: str) -> str:
    return f"job:{organization_id}:{job}:{currency}"


def issuer() -> str:
    return getattr(settings, "INVOICE_ISSUER", "TDM")


def grace() -> timedelta:
    return timedelta(days=getattr(settings, "INVOICE_GRACE_DAYS", 3))


def due_after() -> timedelta:
    return timedelta(days=getattr(settings, "INVOICE_DUE_DAYS", 14))


_MINOR_STEP = {currency: MICROS // 10**digits for currency, digits in CURRENCIES.items()}


def cents(amount_micros: int, currency: str) -> int:
    """``Money.round_to_minor`` without the Money objects (a close rounds ~20 per
    invoice): ``rate_amount(amount_micros, 1, step) * step``, inlined."""
    step = _MINOR_STEP.get(currency) or _MINOR_STEP[check_currency(currency)]
    quotient, remainder = divmod(amount_micros, step)
    if 2 * remainder > step or (2 * remainder == step and quotient % 2 == 1):
        quotient += 1
    return quotient * step


def money_text(amount_micros: int, currency: str) -> str:
    """``Money(amount_micros, currency).format()``, without the Money object: a
    document holds some twenty-five amounts."""
    whole, frac = divmod(abs(amount_micros), MICROS)
    digits = f"{frac:06d}".rstrip("0").ljust(CURRENCIES[currency], "0")
    return f"{'-' if amount_micros < 0 else ''}{whole}.{digits}"


def _money_texts(currency: str) -> Callable[[int], str]:
    """``money_text(m, currency)`` with the currency looked up once (a document's
    lines hold three amounts each)."""
    digits = CURRENCIES[currency]
    zeros = "0" * digits

    def text(micros: int) -> str:
        whole, frac = divmod(-micros if micros < 0 else micros, MICROS)
        sign = "-" if micros < 0 else ""
        if frac:
            return f"{sign}{whole}.{f'{frac:06d}'.rstrip('0'):0<{digits}}"
        return f"{sign}{whole}.{zeros}"

    return text


def _money_of(currency: str) -> Callable[[int], dict[str, Any]]:
    """``{"micros": m, "text": money_text(m, currency)}`` for the amounts of one
    document."""
    text = _money_texts(currency)
    return lambda micros: {"micros": micros, "text": text(micros)}


def canonical(document: dict[str, Any]) -> bytes:
    """The document as canonical JSON: json.dumps's sorted, compact, unescaped text
    (tests/billing/test_invoice_documents.py holds the two equal)."""
    return CANONICAL_JSON.encode(document)


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


@dataclass(frozen=True, slots=True)
class Totals:
    exact: int
    subtotal: int
    rounding: int
    tax_rate_bps: int
    tax: int
    total: int


def totals_of(computed: Computed, currency: str, tax_rate_bps: int) -> Totals:
    subtotal = sum(cents(line.exact_micros, currency) for line in computed.lines)
    tax = cents(rate_amount(subtotal, tax_rate_bps, BPS), currency)
    return Totals(
        computed.exact_micros,
        subtotal,
        subtotal - computed.exact_micros,
        tax_rate_bps,
        tax,
        subtotal + tax,
    )


def _profile(organization: Organization) -> dict[str, Any]:
    return _profiles([organization])[organization.pk]


def _profiles(organizations: list[Organization]) -> dict[int, dict[str, Any]]:
    orgs, orgs_params = _any(sorted(o.pk for o in organizations))
    found: dict[int, tuple] = {
        row[0]: row[1:]
        for row in _select(
            "SELECT organization_id, legal_name, address, tax_id, tax_rate_bps, tax_label "
            f"FROM {BillingProfile._meta.db_table} WHERE organization_id {orgs}",
            orgs_params,
        )
    }
    buyers = {}
    for organization in organizations:
        legal_name, address, tax_id, tax_rate_bps, tax_label = found.get(
            organization.pk, ("", "", "", 0, "")
        )
        buyers[organization.pk] = {
            "name": organization.name,
            "legal_name": legal_name or organization.name,
            "address": address,
            "tax_id": tax_id,
            "tax_rate_bps": tax_rate_bps,
            "tax_label": tax_label or "Tax",
        }
    return buyers


def _document(
    *,
    invoice: Invoice,
    computed: Computed,
    totals: Totals,
    buyer: dict[str, Any],
    number: str | None,
    finalized_at: str | None,
    due_at: str | None,
    prepaid_applied: int,
) -> dict[str, Any]:
    currency = invoice.currency
    money = _money_of(currency)
    return {
        "schema": "tandem.invoice/1",
        "key": invoice.key,
        "kind": invoice.kind,
        "number": number,
        "issuer": invoice.issuer,
        "currency": currency,
        "status": "draft" if number is None else "final",
        "period": {
            "start": invoice.period_start.isoformat(),
            "end": invoice.period_end.isoformat(),
        },
        "job": invoice.job,
        "buyer": {"organization": invoice.organization_id, **buyer},
        "finalized_at": finalized_at,
        "due_at": due_at,
        "as_of_position": computed.as_of_position,
        "lines": _document_lines(computed, currency),
        "totals": {
            "exact": money(totals.exact),
            "subtotal": money(totals.subtotal),
            "rounding": money(totals.rounding),
            "tax_rate_bps": totals.tax_rate_bps,
            "tax": money(totals.tax),
            "total": money(totals.total),
            "prepaid_applied": money(prepaid_applied),
            "amount_due": money(totals.total - prepaid_applied),
        },
    }


def _document_json(
    *,
    invoice: Invoice,
    computed: Computed,
    totals: Totals,
    buyer: dict[str, Any],
    number: str | None,
    finalized_at: str | None,
    due_at: str | None,
    prepaid_applied: int,
) -> bytes:
    """``canonical(_document(...))``, byte for byte, with the lines taken from
    ``computed.document_lines_json`` (made ahead, as text) when there: the rest of
    the document is encoded with a placeholder for its lines, which the lines' text
    then replaces. The placeholder, ``"lines":0``, cannot occur elsewhere: a quote
    inside a string value is escaped, and no other object of the document has a key
    ``lines``. (tests/billing/test_invoice_documents.py holds the two equal.)"""
    lines = computed.document_lines_json
    if lines is None:
        lines = CANONICAL_JSON.encode(_document_lines(computed, invoice.currency))
    head = _document(
        invoice=invoice,
        computed=dataclasses.replace(computed, lines=[]),
        totals=totals,
        buyer=buyer,
        number=number,
        finalized_at=finalized_at,
        due_at=due_at,
        prepaid_applied=prepaid_applied,
    )
    head["lines"] = 0
    return CANONICAL_JSON.encode(head).replace(b'"lines":0', b'"lines":' + lines, 1)


class _JsonStrings(dict[str, str]):
    """Strings as canonical JSON (quoted, escaped as ``canonical`` escapes them),
    each distinct one encoded once."""

    def __missing__(self, value: str) -> str:
        encoded = self[value] = json_text(value)
        return encoded


def _document_lines_json(computed: Computed, currency: str, strings: _JsonStrings) -> bytes:
    """``canonical(_document_lines(computed, currency))``, made as text: the keys
    written in sorted order, strings encoded by ``canonical`` (``strings``), numbers
    as Python writes integers, amounts' texts digits, sign and point only. A month
    close makes some 60,000 lines: a dict per line, amount and entry, then encoded,
    cost it several times more. (tests/billing/test_invoice_documents.py holds the
    two equal.)"""
    text = _money_texts(currency)
    positions = computed.positions
    out = []
    for index, line in enumerate(computed.lines, start=1):
        amount = cents(line.exact_micros, currency)
        entries = ",".join(
            [
                f'{{"amount_micros":{value},"position":{positions[transfer_id]},'
                f'"transfer_id":{strings[transfer_id]}}}'
                for transfer_id, value in sorted(line.entries.items())
            ]
        )
        out.append(
            f'{{"amount":{{"micros":{amount},"text":"{text(amount)}"}},'
            f'"description":{strings[line.description]},"entries":[{entries}],'
            f'"exact":{{"micros":{line.exact_micros},"text":"{text(line.exact_micros)}"}},'
            f'"gpu_model":{strings[line.gpu_model]},"job":{strings[line.job]},'
            f'"model":{strings[line.model]},"ordinal":{index},"price_unit":{line.price_unit},'
            f'"product":{strings[line.product]},"quantity":{line.quantity},'
            f'"unit":{strings[line.unit]},"unit_price":{{"micros":{line.unit_price_micros},'
            f'"text":"{text(line.unit_price_micros)}"}}}}'
        )
    return f"[{','.join(out)}]".encode()


def _document_lines(computed: Computed, currency: str) -> list[dict[str, Any]]:
    """The lines of an invoice's document (what most of it is)."""
    money = _money_of(currency)
    positions = computed.positions
    return [
        {
            "ordinal": index,
            "product": line.product,
            "description": line.description,
            "job": line.job,
            "model": line.model,
            "gpu_model": line.gpu_model,
            "quantity": line.quantity,
            "unit": line.unit,
            "unit_price": money(line.unit_price_micros),
            "price_unit": line.price_unit,
            "exact": money(line.exact_micros),
            "amount": money(cents(line.exact_micros, currency)),
            "entries": [
                {
                    "transfer_id": transfer_id,
                    "position": positions[transfer_id],
                    "amount_micros": amount,
                }
                for transfer_id, amount in sorted(line.entries.items())
            ],
        }
        for index, line in enumerate(computed.lines, start=1)
    ]


def _write_lines(invoice: Invoice, computed: Computed) -> None:
    _write_lines_many([(invoice, computed)], replacing=[invoice.pk])


def _line_rows(invoice: Invoice, computed: Computed) -> list[InvoiceLine]:
    return [
        InvoiceLine(
            invoice=invoice,
            ordinal=index,
            product=line.product,
            description=line.description[:300],
            job=line.job[:200],
            model=line.model[:200],
            gpu_model=line.gpu_model[:100],
            region=line.region[:64],
            quantity=line.quantity,
            unit=line.unit,
            unit_price_micros=line.unit_price_micros,
            price_unit=line.price_unit,
            exact_micros=line.exact_micros,
            amount_micros=cents(line.exact_micros, invoice.currency),
        )
        for index, line in enumerate(computed.lines, start=1)
    ]


def _ids_take(model: type[models.Model], count: int) -> list[int]:
    """``count`` ids from the table's own sequence (PostgreSQL), so that rows can go
    in by COPY and be referred to (a line by its links) without being read back."""
    if not count:
        return []
    with connection.wrap_database_errors:
        cursor = server_cursor()
        # The sequence's name looked up once, not once per id.
        cursor.execute(
            "SELECT nextval(s) FROM CAST(pg_get_serial_sequence(%s, 'id') AS regclass) AS s, "
            "generate_series(1, %s)",
            [model._meta.db_table, count],
        )
        return [row[0] for row in cursor.fetchall()]


_LINE_COLUMNS = [
    "id",
    "invoice_id",
    "ordinal",
    "product",
    "description",
    "job",
    "model",
    "gpu_model",
    "region",
    "quantity",
    "unit",
    "unit_price_micros",
    "price_unit",
    "exact_micros",
    "amount_micros",
]


def _write_lines_many(invoices: list[tuple[Invoice, Computed]], *, replacing: list[int]) -> None:
    """Write the lines (and their links to journal entries) of these invoices, in
    place of those the invoices ``replacing`` had (drafts; new invoices have none).
    On PostgreSQL: one COPY each for the lines and the links, the lines' ids taken
    from their sequence first."""
    for chunk in _chunks(replacing):
        InvoiceLine.objects.filter(invoice_id__in=chunk).delete()
    if not is_postgres():
        made = InvoiceLine.objects.bulk_create(
            [line for invoice, computed in invoices for line in _line_rows(invoice, computed)]
        )
        by_key = {(line.invoice_id, line.ordinal): line for line in made}
        InvoiceLineEntry.objects.bulk_create(
            InvoiceLineEntry(
                line=by_key[(invoice.pk, index)],
                entry_position=computed.positions[transfer_id],
                transfer_id=transfer_id,
                amount_micros=amount,
            )
            for invoice, computed in invoices
            for index, line in enumerate(computed.lines, start=1)
            for transfer_id, amount in sorted(line.entries.items())
        )
        return
    ids = iter(_ids_take(InvoiceLine, sum(len(computed.lines) for _, computed in invoices)))
    # The rows as COPY's text, made here: psycopg's write_row, per value, cost as much
    # as the server took to store them (a close writes ~160,000 of these rows).
    text = _CopyText()
    lines: list[str] = []
    links: list[str] = []
    for invoice, computed in invoices:
        currency = invoice.currency
        positions = computed.positions
        for index, line in enumerate(computed.lines, start=1):
            line_id = next(ids)
            # The same values as _line_rows.
            lines.append(
                f"{line_id}\t{invoice.pk}\t{index}\t{text[line.product]}\t"
                f"{text[line.description[:300]]}\t{text[line.job[:200]]}\t"
                f"{text[line.model[:200]]}\t{text[line.gpu_model[:100]]}\t"
                f"{text[line.region[:64]]}\t{line.quantity}\t{text[line.unit]}\t"
                f"{line.unit_price_micros}\t{line.price_unit}\t{line.exact_micros}\t"
                f"{cents(line.exact_micros, currency)}\n"
            )
            links.extend(
                f"{line_id}\t{positions[transfer_id]}\t{text[transfer_id]}\t{amount}\n"
                for transfer_id, amount in sorted(line.entries.items())
            )
    columns = ["line_id", "entry_position", "transfer_id", "amount_micros"]
    with connection.wrap_database_errors:
        cursor = server_cursor()
        for statement, rows in (
            (copy_statement(InvoiceLine, _LINE_COLUMNS), lines),
            (copy_statement(InvoiceLineEntry, columns), links),
        ):
            with cursor.copy(statement) as copy:
                for offset in range(0, len(rows), 5000):
                    copy.write("".join(rows[offset : offset + 5000]))


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class _CopyText(dict[str, str]):
    """Text values escaped for COPY's text format (backslash, tab, newline, carriage
    return), each distinct value escaped once."""

    def __missing__(self, value: str) -> str:
        escaped = self[value] = value.translate(_COPY_ESCAPES)
        return escaped


def _invoices_write(invoices: Iterable[tuple[Invoice, str]], *, new: int) -> None:
    """Write invoices as they come, each with its document as canonical JSON text:
    drafts (with a pk) updated in place, ``new`` new ones inserted (their pks set).
    On PostgreSQL the new ones go in by one COPY, which the server stores as the
    rows arrive: the documents of the later invoices are made (``invoices`` may be a
    generator) while it stores the earlier ones, the two cores working at once."""
    drafts: list[Invoice] = []
    if not is_postgres():
        made: list[Invoice] = []
        for invoice, _ in invoices:
            (made if invoice.pk is None else drafts).append(invoice)
        Invoice.objects.bulk_create(made)
    else:
        fields = [f for f in Invoice._meta.concrete_fields if f.name != "document"]
        attnames = [f.attname for f in fields if not f.primary_key]
        ids = iter(_ids_take(Invoice, new))
        with connection.wrap_database_errors:
            cursor = server_cursor()
            sql = copy_statement(Invoice, [str(f.column) for f in fields] + ["document"])
            with cursor.copy(sql) as copy:
                for invoice, text in invoices:
                    if invoice.pk is not None:
                        drafts.append(invoice)
                        continue
                    invoice.pk = next(ids)
                    invoice._state.adding = False
                    copy.write_row(
                        (invoice.pk, *[getattr(invoice, name) for name in attnames], text)
                    )
    for invoice in drafts:
        invoice.save()


# --- drafts -------------------------------------------------------------------------


@retry_transaction
def invoice_draft_refresh(
    *,
    organization: Organization,
    period: date,
    currency: str | None = None,
    now: datetime | None = None,
) -> Invoice | None:
    """Create or recompute the org's draft for a month; a finalized invoice is
    returned as it is. None when the month charged the org nothing."""
    currency = currency or settings.TANDEM_CURRENCY
    now = now or timezone.now()
    key = monthly_key(organization.pk, period, currency)
    invoice = Invoice.objects.select_for_update().filter(key=key).first()
    if invoice is not None and invoice.status != Invoice.Status.DRAFT:
        return invoice
    computed = invoice_compute(organization=organization, currency=currency, period=period)
    if not computed.lines:
        if invoice is not None:
            invoice.delete()
        return None
    start, end = month_bounds(period)
    if invoice is None:
        invoice = Invoice(
            key=key,
            organization=organization,
            kind=Invoice.Kind.MONTHLY,
            currency=currency,
            period_start=start,
            period_end=end,
            issuer=issuer(),
            generated_at=now,
            grace_ends_at=end + grace(),
        )
    _apply_draft(invoice, computed, now)
    return invoice


def _apply_draft(invoice: Invoice, computed: Computed, now: datetime) -> None:
    buyer = _profile(invoice.organization)
    totals = totals_of(computed, invoice.currency, buyer["tax_rate_bps"])
    invoice.subtotal_exact_micros = totals.exact
    invoice.subtotal_micros = totals.subtotal
    invoice.rounding_micros = totals.rounding
    invoice.tax_rate_bps = totals.tax_rate_bps
    invoice.tax_micros = totals.tax
    invoice.total_micros = totals.total
    invoice.prepaid_applied_micros = computed.prepaid_micros
    invoice.amount_due_micros = totals.total - computed.prepaid_micros
    invoice.generated_at = now
    invoice.document = _document(
        invoice=invoice,
        computed=computed,
        totals=totals,
        buyer=buyer,
        number=None,
        finalized_at=None,
        due_at=None,
        prepaid_applied=computed.prepaid_micros,
    )
    invoice.document_sha256 = hashlib.sha256(canonical(invoice.document)).hexdigest()
    invoice.save()
    _write_lines(invoice, computed)


# --- finalization -------------------------------------------------------------------


def _next_number(series: str) -> str:
    return _next_numbers(series, 1)[0]


def _next_numbers(series: str, count: int) -> list[str]:
    """The next ``count`` numbers of a series, taken under the sequence row's lock."""
    name = issuer()
    DocumentSequence.objects.get_or_create(issuer=name, series=series)
    sequence = DocumentSequence.objects.select_for_update().get(issuer=name, series=series)
    first = sequence.last_number + 1
    sequence.last_number += count
    sequence.save(update_fields=["last_number"])
    return _numbers(series, first, count)


def _numbers(series: str, first: int, count: int) -> list[str]:
    name = issuer()
    prefix = name if series == "INV" else f"{name}-{series}"
    return [f"{prefix}-{n:06d}" for n in range(first, first + count)]


def _number_last(series: str) -> int:
    """The last number of a series handed out, as this transaction sees it (no lock)."""
    found = DocumentSequence.objects.filter(issuer=issuer(), series=series).values_list(
        "last_number", flat=True
    )
    return next(iter(found), 0)


class _NumbersTaken(Exception):
    """The numbers a chunk of a close predicted were not the next ones when it
    came to take them: another finalization took some meanwhile."""


def _numbers_confirm(series: str, first: int, count: int) -> None:
    """Take the ``count`` numbers from ``first`` on, under the sequence row's lock
    (held to the commit), if they are the next ones; else ``_NumbersTaken``."""
    if not count:
        return
    name = issuer()
    DocumentSequence.objects.get_or_create(issuer=name, series=series)
    updated = DocumentSequence.objects.filter(
        issuer=name, series=series, last_number=first - 1
    ).update(last_number=first - 1 + count)
    if not updated:
        raise _NumbersTaken(f"{series} numbers from {first} on were taken meanwhile")


def _append(invoice: Invoice, event_type: str, payload: dict[str, Any], actor: str) -> int:
    stream_id = f"invoice:{invoice.key}"
    recorded = event_append(
        stream_type=INVOICE_STREAM,
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[NewEvent(event_type, {"key": invoice.key, **payload})],
        tenant_id=invoice.organization_id,
        metadata={"actor": actor},
    )
    return recorded[0].position


def _entry_request(
    transfer_id: str, currency: str, signed: dict[int, int], kind: str, description: str
) -> EntryRequest | None:
    """An entry from signed amounts per account (debit positive); None if all zero."""
    legs = tuple(
        (account, "D" if amount > 0 else "C", abs(amount))
        for account, amount in sorted(signed.items())
        if amount
    )
    if not legs:
        return None
    return EntryRequest(
        transfer_id=transfer_id, currency=currency, legs=legs, kind=kind, description=description
    )


def _post(
    transfer_id: str, currency: str, signed: dict[int, int], kind: str, description: str, actor: str
) -> int | None:
    """Post an entry from signed amounts per account (debit positive); None if all zero."""
    entry = _entry_request(transfer_id, currency, signed, kind, description)
    if entry is None:
        return None
    return raise_for(ledger_execute([entry], actor=actor)[0]).position


def _catch_up() -> None:
    """Rate and accrue every usage batch committed so far."""
    from billing.accrual import usage_accruals
    from billing.rating import usage_rating
    from core.followers import followers_run_until_idle

    followers_run_until_idle([usage_rating, usage_accruals])


def invoice_finalize(
    *,
    invoice: Invoice,
    actor: str = "system",
    now: datetime | None = None,
    close_usage: bool = True,
) -> Invoice:
    """Freeze a draft: close the org's usage month (later usage counts in the next
    one), rate and accrue what arrived before, then in one transaction recompute it a
    last time, take the next number, post rounding, tax and prepaid credit, and record
    the event. ``close_usage=False``: the caller closed the month and caught up."""
    if close_usage and invoice.kind == Invoice.Kind.MONTHLY:
        from metering.services import usage_period_close

        usage_period_close(organization=invoice.organization, period=invoice.period_start.date())
        _catch_up()
    return _finalize(invoice=invoice, actor=actor, now=now or timezone.now())


@retry_transaction
def _finalize(*, invoice: Invoice, actor: str, now: datetime) -> Invoice:
    locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if locked.status != Invoice.Status.DRAFT:
        return locked
    organization = locked.organization
    period = locked.period_start.date()
    computed = invoice_compute(
        organization=organization,
        currency=locked.currency,
        period=period if locked.kind == Invoice.Kind.MONTHLY else None,
        job=locked.job if locked.kind == Invoice.Kind.JOB else None,
    )
    if not computed.lines:
        raise Conflict(f"invoice {locked.key} has nothing to bill", details={"invoice": locked.key})
    buyer = _profile(organization)
    totals = totals_of(computed, locked.currency, buyer["tax_rate_bps"])
    number = _next_number("INV")
    currency = locked.currency
    receivable = account_open(
        organization=organization, kind=Account.Kind.RECEIVABLE, currency=currency
    )
    credit = account_open(organization=organization, kind=Account.Kind.CREDIT, currency=currency)
    # Apply what prepaid credit is left to what the charges left owed.
    owed = totals.total - computed.prepaid_micros
    available = Balance.objects.select_for_update().get(account=credit).credit_side_available
    apply = max(0, min(owed, available))
    signed: dict[int, int] = defaultdict(int)
    signed[receivable.pk] += totals.rounding + totals.tax - apply
    signed[platform_account(kind=Account.Kind.ROUNDING, currency=currency).pk] -= totals.rounding
    signed[platform_account(kind=Account.Kind.TAX_PAYABLE, currency=currency).pk] -= totals.tax
    signed[credit.pk] += apply
    _post(
        f"invoice:{locked.key}",
        currency,
        signed,
        "invoice",
        f"invoice {number}: rounding to cents, tax, prepaid credit applied",
        actor,
    )
    prepaid = computed.prepaid_micros + apply
    finalized_at = now.isoformat()
    due_at = (now + due_after()).isoformat()
    document = _document(
        invoice=locked,
        computed=computed,
        totals=totals,
        buyer=buyer,
        number=number,
        finalized_at=finalized_at,
        due_at=due_at,
        prepaid_applied=prepaid,
    )
    digest = hashlib.sha256(canonical(document)).hexdigest()
    _set_final(
        locked,
        number=number,
        finalized_at=now,
        due_at=now + due_after(),
        totals=totals,
        prepaid=prepaid,
        document=document,
        digest=digest,
    )
    locked.save()
    _write_lines(locked, computed)
    _append(
        locked,
        INVOICE_FINALIZED,
        {
            "number": number,
            "organization": organization.pk,
            "kind": locked.kind,
            "currency": currency,
            "period_start": locked.period_start.isoformat(),
            "period_end": locked.period_end.isoformat(),
            "job": locked.job,
            "issuer": locked.issuer,
            "finalized_at": finalized_at,
            "due_at": due_at,
            "as_of_position": computed.as_of_position,
            "buyer": buyer,
            "prepaid_applied_micros": prepaid,
            "credit_applied_at_finalize_micros": apply,
            "total_micros": totals.total,
            "document_sha256": digest,
        },
        actor,
    )
    return locked


def _set_final(
    invoice: Invoice,
    *,
    number: str,
    finalized_at: datetime,
    due_at: datetime,
    totals: Totals,
    prepaid: int,
    document: dict | None,
    digest: str,
) -> None:
    """A finalized invoice's number, status, dates, totals, prepaid credit applied
    and document (unsaved): paid at once when prepaid credit covers it."""
    invoice.number = number
    invoice.status = Invoice.Status.PAID if totals.total - prepaid <= 0 else Invoice.Status.OPEN
    invoice.finalized_at = finalized_at
    invoice.due_at = due_at
    if invoice.status == Invoice.Status.PAID:
        invoice.closed_at = finalized_at
        invoice.payment_reference = "prepaid credit"
    invoice.subtotal_exact_micros = totals.exact
    invoice.subtotal_micros = totals.subtotal
    invoice.rounding_micros = totals.rounding
    invoice.tax_rate_bps = totals.tax_rate_bps
    invoice.tax_micros = totals.tax
    invoice.total_micros = totals.total
    invoice.prepaid_applied_micros = prepaid
    invoice.amount_due_micros = totals.total - prepaid
    invoice.document = document
    invoice.document_sha256 = digest


def _finalized_payload(
    invoice: Invoice,
    computed: Computed,
    totals: Totals,
    buyer: dict[str, Any],
    prepaid: int,
    apply: int,
    digest: str,
    finalized_at: str,
    due_at: str,
) -> dict[str, Any]:
    return {
        "number": invoice.number,
        "organization": invoice.organization_id,
        "kind": invoice.kind,
        "currency": invoice.currency,
        "period_start": invoice.period_start.isoformat(),
        "period_end": invoice.period_end.isoformat(),
        "job": invoice.job,
        "issuer": invoice.issuer,
        "finalized_at": finalized_at,
        "due_at": due_at,
        "as_of_position": computed.as_of_position,
        "buyer": buyer,
        "prepaid_applied_micros": prepaid,
        "credit_applied_at_finalize_micros": apply,
        "total_micros": totals.total,
        "document_sha256": digest,
    }


def _buyer_accounts(org_ids: list[int], currency: str) -> dict[tuple[int, str], int]:
    """(org, kind) -> account id of each org's credit and receivable that exist."""
    orgs, orgs_params = _any(sorted(org_ids))
    kinds, kinds_params = _any([kind.value for kind in BUYER_KINDS])
    return {
        (org, kind): pk
        for org, kind, pk in _select(
            f"SELECT organization_id, kind, id FROM {Account._meta.db_table} "
            f"WHERE organization_id {orgs} AND currency = %s AND kind {kinds}",
            [*orgs_params, currency, *kinds_params],
        )
    }


def _buyer_accounts_open(
    missing: list[tuple[int, str]], currency: str
) -> dict[tuple[int, str], int]:
    """(org, kind) -> account id of these buyer accounts, which did not exist: opened
    (with a zero balance, as ``account_open`` does)."""
    if not missing:
        return {}
    try:
        with transaction.atomic():
            if is_postgres():
                made = _accounts_insert_pg(missing, currency)
            else:
                accounts = Account.objects.bulk_create(
                    [
                        Account(
                            organization_id=org,
                            kind=kind,
                            currency=currency,
                            normal_side=Account.NORMAL_SIDE[Account.Kind(kind)],
                            overdraft_limit_micros=0 if kind == Account.Kind.CREDIT else None,
                        )
                        for org, kind in missing
                    ]
                )
                made = [(int(a.organization_id or 0), a.kind, a.pk) for a in accounts]
                Balance.objects.bulk_create([Balance(account_id=pk) for _, _, pk in made])
    except IntegrityError as exc:
        # Opened concurrently (account_open): read them again from a fresh transaction.
        raise RetryTransaction("a buyer account was opened concurrently") from exc
    return {(org, kind): pk for org, kind, pk in made}


def _accounts_insert_pg(
    accounts: list[tuple[int, str]], currency: str
) -> list[tuple[int, str, int]]:
    with connection.wrap_database_errors:
        cursor = server_cursor()
        cursor.execute(
            f"""WITH made AS (
                    INSERT INTO {Account._meta.db_table} (organization_id, kind, currency,
                                normal_side, overdraft_limit_micros, created_at)
                    SELECT o, k, %s, s, l, %s
                      FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[])
                           AS t(o, k, s, l)
                    RETURNING id, organization_id, kind),
                balance AS (
                    INSERT INTO {Balance._meta.db_table} (account_id, debits_posted, credits_posted,
                                debits_pending, credits_pending, position)
                    SELECT id, 0, 0, 0, 0, 0 FROM made)
                SELECT organization_id, kind, id FROM made""",
            [
                currency,
                timezone.now(),
                [org for org, _ in accounts],
                [str(kind) for _, kind in accounts],
                [str(Account.NORMAL_SIDE[Account.Kind(kind)]) for _, kind in accounts],
                [0 if kind == Account.Kind.CREDIT else None for _, kind in accounts],
            ],
        )
        return cursor.fetchall()


def _invoice_new(**values: Any) -> Invoice:
    """A new invoice with these attribute values (the others their fields' defaults),
    made by position: Django's keyword path costs several times more, and a close
    makes one invoice per buyer."""
    if not _INVOICE_DEFAULTS:
        _INVOICE_DEFAULTS.update(
            (f.attname, f.get_default()) for f in Invoice._meta.concrete_fields
        )
    return Invoice(*[values.get(name, default) for name, default in _INVOICE_DEFAULTS.items()])


_INVOICE_DEFAULTS: dict[str, Any] = {}

CLOSE_CHUNK = 1000  # orgs finalized per transaction by a period close, on average


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A chunk's invoices computed before its transaction (``_compute_ahead``), and
    the one thing they depend on that can change until then: the jobs invoiced on
    their own. Everything else they read is fixed as of ``as_of``."""

    as_of: int
    jobs_alone: dict[int, set[str]]
    computed: dict[int, Computed]
    platform: tuple[int, int]  # the rounding and tax_payable accounts


def _compute_ahead(org_ids: list[int], currency: str, period: date) -> _Ahead:
    """What ``_finalize_month`` will need of these orgs' invoices that it can have
    before its transaction: their lines, and their documents' lines. Orgs whose
    invoice is final already are left out (a close run again computes nothing)."""
    keys, keys_params = _any([monthly_key(org, period, currency) for org in org_ids])
    final = {
        org
        for (org,) in _select(
            f"SELECT organization_id FROM {Invoice._meta.db_table} "
            f"WHERE key {keys} AND status <> %s",
            [*keys_params, Invoice.Status.DRAFT],
        )
    }
    org_ids = [org for org in org_ids if org not in final]
    as_of = Event.objects.aggregate(p=Max("position"))["p"] or 0
    jobs_alone = _jobs_alone(org_ids, currency)
    computed = _compute_monthly(org_ids, currency, period, as_of, jobs_alone)
    strings = _JsonStrings()
    for found in computed.values():
        found.document_lines_json = _document_lines_json(found, currency, strings)
    return _Ahead(as_of, jobs_alone, computed, _platform(currency))


def _platform(currency: str) -> tuple[int, int]:
    """The platform's rounding and tax_payable accounts, which a finalization posts to."""
    return (
        platform_account(kind=Account.Kind.ROUNDING, currency=currency).pk,
        platform_account(kind=Account.Kind.TAX_PAYABLE, currency=currency).pk,
    )


@retry_transaction
def _finalize_month(
    *,
    organizations: list[Organization],
    period: date,
    currency: str,
    now: datetime,
    actor: str,
    ahead: _Ahead | None = None,
    numbering: _Numbering | None = None,
) -> tuple[int, int]:
    """Refresh and finalize the monthly invoices of many orgs in one transaction, as
    ``invoice_draft_refresh`` then ``invoice_finalize`` would one by one (the caller
    closed the usage month and caught up), with every read and write batched: the
    invoices computed as of one position, numbered in the orgs' order from one lock
    of the sequence, their entries posted in one ``ledger_execute``, their
    InvoiceFinalized events appended last. Returns (finalized, already final).

    ``ahead``: these orgs' invoices computed before the transaction began (by
    ``_compute_ahead``); used if the jobs invoiced on their own are still the same,
    else computed again here.

    ``numbering``: the chunk is one of a close's, finalized in another process than
    the chunks before and after it (``_finalize_in_processes``). Its numbers are then
    predicted (the chunk before's first number plus its count) rather than taken
    first, and confirmed under the sequence's lock only once everything else is
    written: the lock, which serializes the chunks, is held for the ledger entries,
    the events and the commit alone. A prediction that does not hold (another
    finalization took a number meanwhile) raises ``_NumbersTaken``."""
    start, end = month_bounds(period)
    # (Orgs by .id here, not .pk: a property, which this would look up ~30 times an org.)
    keys = {o.id: monthly_key(o.id, period, currency) for o in organizations}
    # A final invoice's document is not needed here (a draft's is rewritten below).
    existing = {
        invoice.key: invoice
        for invoice in Invoice.objects.select_for_update()
        .filter(key__in=list(keys.values()))
        .defer("document")
        .order_by("pk")
    }
    already = sum(1 for invoice in existing.values() if invoice.status != Invoice.Status.DRAFT)
    todo = [
        o
        for o in organizations
        if keys[o.id] not in existing or existing[keys[o.id]].status == Invoice.Status.DRAFT
    ]
    if not todo:
        if numbering is not None:
            numbering.first(0)
        return 0, already
    todo_ids = [o.id for o in todo]
    jobs_alone = _jobs_alone(todo_ids, currency)
    if (
        ahead is not None
        and all(org in ahead.computed for org in todo_ids)
        and all(jobs_alone.get(org, set()) == ahead.jobs_alone.get(org, set()) for org in todo_ids)
    ):
        computed = ahead.computed
    else:
        as_of = Event.objects.aggregate(p=Max("position"))["p"] or 0
        computed = _compute_monthly(todo_ids, currency, period, as_of, jobs_alone)
    empty = [
        existing[keys[o.id]].pk for o in todo if not computed[o.id].lines and keys[o.id] in existing
    ]
    if empty:
        Invoice.objects.filter(pk__in=empty).delete()
    todo = [o for o in todo if computed[o.id].lines]
    if numbering is not None:
        first = numbering.first(len(todo))
        numbers = _numbers("INV", first, len(todo))
    if not todo:
        return 0, already
    buyers = _profiles(todo)
    if numbering is None:
        numbers = _next_numbers("INV", len(todo))
    accounts = _buyer_accounts([o.id for o in todo], currency)
    credits, credits_params = _any(
        sorted(pk for (_, kind), pk in accounts.items() if kind == Account.Kind.CREDIT)
    )
    lock = " FOR UPDATE" if is_postgres() else ""
    available = {
        account: credits_posted - debits_posted - debits_pending
        for account, credits_posted, debits_posted, debits_pending in _select(
            "SELECT account_id, credits_posted, debits_posted, debits_pending "
            f"FROM {Balance._meta.db_table} WHERE account_id {credits} ORDER BY account_id{lock}",
            credits_params,
        )
    }
    # Each invoice's totals, and what prepaid credit left it applies to what the charges
    # left owed; the rest (rounding and tax not covered) goes to the receivable, which
    # is opened here if missing, and only then: a prepaid buyer's is not.
    settled: dict[int, tuple[Totals, int, int]] = {}  # org -> totals, applied, owed
    missing: list[tuple[int, str]] = []
    for organization in todo:
        found = computed[organization.id]
        totals = totals_of(found, currency, buyers[organization.id]["tax_rate_bps"])
        credit = accounts.get((organization.id, Account.Kind.CREDIT))
        apply = max(0, min(totals.total - found.prepaid_micros, available.get(credit, 0)))
        owed = totals.rounding + totals.tax - apply
        settled[organization.id] = (totals, apply, owed)
        if owed and (organization.id, Account.Kind.RECEIVABLE) not in accounts:
            missing.append((organization.id, str(Account.Kind.RECEIVABLE)))
    accounts.update(_buyer_accounts_open(missing, currency))
    rounding, tax_payable = ahead.platform if ahead is not None else _platform(currency)
    streams, streams_params = _any([f"invoice:{keys[o.id]}" for o in todo])
    versions = dict(
        _select(
            f"SELECT stream_id, max(version) FROM {Event._meta.db_table} "
            f"WHERE stream_id {streams} GROUP BY stream_id",
            streams_params,
        )
    )
    finalized_at = now.isoformat()
    due_at = (now + due_after()).isoformat()
    entries: list[EntryRequest] = []
    events: list[EventRow] = []
    final: list[tuple[Invoice, Computed]] = []
    drafts = [existing[keys[o.id]].pk for o in todo if keys[o.id] in existing]
    name, grace_ends_at = issuer(), end + grace()

    def finalized() -> Iterator[tuple[Invoice, str]]:
        """Each invoice with its document, made as the COPY that stores them asks."""
        for organization, number in zip(todo, numbers, strict=True):
            key = keys[organization.id]
            found = computed[organization.id]
            buyer = buyers[organization.id]
            totals, apply, owed = settled[organization.id]
            invoice = existing.get(key) or _invoice_new(
                key=key,
                organization_id=organization.id,
                kind=Invoice.Kind.MONTHLY,
                currency=currency,
                period_start=start,
                period_end=end,
                issuer=name,
                grace_ends_at=grace_ends_at,
            )
            invoice.generated_at = now
            signed: dict[int, int] = defaultdict(int)
            if owed:
                signed[accounts[(organization.id, Account.Kind.RECEIVABLE)]] += owed
            signed[rounding] -= totals.rounding
            signed[tax_payable] -= totals.tax
            if apply:
                signed[accounts[(organization.id, Account.Kind.CREDIT)]] += apply
            entry = _entry_request(
                f"invoice:{key}",
                currency,
                signed,
                "invoice",
                f"invoice {number}: rounding to cents, tax, prepaid credit applied",
            )
            if entry is not None:
                entries.append(entry)
            prepaid = found.prepaid_micros + apply
            text = _document_json(
                invoice=invoice,
                computed=found,
                totals=totals,
                buyer=buyer,
                number=number,
                finalized_at=finalized_at,
                due_at=due_at,
                prepaid_applied=prepaid,
            )
            digest = hashlib.sha256(text).hexdigest()
            # The document goes in as its text (below), not from this attribute.
            _set_final(
                invoice,
                number=number,
                finalized_at=now,
                due_at=now + due_after(),
                totals=totals,
                prepaid=prepaid,
                document=None,
                digest=digest,
            )
            final.append((invoice, found))
            stream_id = f"invoice:{key}"
            events.append(
                EventRow(
                    stream_type=INVOICE_STREAM,
                    stream_id=stream_id,
                    version=versions.get(stream_id, 0) + 1,
                    type=INVOICE_FINALIZED,
                    payload={
                        "key": key,
                        **_finalized_payload(
                            invoice,
                            found,
                            totals,
                            buyer,
                            prepaid,
                            apply,
                            digest,
                            finalized_at,
                            due_at,
                        ),
                    },
                    tenant_id=organization.id,
                    metadata={"actor": actor, "events_in_append": 1},
                )
            )
            yield invoice, text.decode()

    try:
        _invoices_write(finalized(), new=len(todo) - len(drafts))
    except IntegrityError as exc:
        if numbering is None:
            raise
        # A predicted number that a finalization elsewhere took and committed.
        raise _NumbersTaken("an invoice number was taken during the close") from exc
    _write_lines_many(final, replacing=drafts)
    # The events' rows encoded now, before the locks below.
    rows = events_cte_rows_encoded(events) if is_postgres() else None
    if numbering is not None:
        # The foreign keys of the rows written (deferred) checked now, not at the
        # commit, which comes under the sequence's lock; then that lock.
        with connection.wrap_database_errors:
            server_cursor().execute("SET CONSTRAINTS ALL IMMEDIATE")
        numbering.wait_turn()
        _numbers_confirm("INV", first, len(todo))
    # The ledger and the event store last: both take the store's append lock, held to
    # the commit.
    for result in ledger_execute(entries, actor=actor):
        raise_for(result)
    if rows is None:
        events_insert(events, recorded_at=timezone.now())
    else:
        # events_insert's statement, its rows encoded ahead.
        with connection.wrap_database_errors:
            server_cursor().execute(
                EVENTS_INSERT_CTE, {"ev_recorded_at": timezone.now(), "ev_rows": rows}
            )
    return len(final), already


def outstanding(invoice: Invoice) -> int:
    """What the buyer still owes on a finalized invoice."""
    return max(
        0,
        invoice.amount_due_micros
        - invoice.amount_paid_micros
        - invoice.written_off_micros
        - _credited_to_receivable(invoice),
    )


def _credited_to_receivable(invoice: Invoice) -> int:
    # .all(), not values_list: a list of invoices read with prefetch_related
    # ("credit_notes"), as the exports do, then costs no query per invoice.
    return sum(note.to_receivable_micros for note in invoice.credit_notes.all())


def _final(locked: Invoice, allowed: tuple[str, ...], action: str) -> Invoice:
    """``locked`` (read with ``select_for_update``), if its status allows ``action``."""
    if locked.status not in allowed:
        raise Conflict(
            f"invoice {locked.number or locked.key} is {locked.status}; it cannot be {action}",
            details={"invoice": locked.number or locked.key, "status": locked.status},
        )
    return locked


@retry_transaction
def invoice_mark_paid(
    *,
    invoice: Invoice,
    payment_reference: str,
    actor: str = "payments",
    now: datetime | None = None,
) -> Invoice:
    """The buyer paid what the invoice left owed: the receivable is settled against
    Stripe clearing (``invoice:<key>:paid``) and the invoice is closed. Paying a
    paid invoice with the same reference again changes nothing."""
    now = now or timezone.now()
    reference = (payment_reference or "").strip()[:255]
    if not reference:
        raise InvalidInput("a payment needs its reference", details={"field": "payment_reference"})
    current = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if current.status == Invoice.Status.PAID and current.payment_reference == reference:
        return current
    locked = _final(current, (Invoice.Status.OPEN, Invoice.Status.PAST_DUE), "paid")
    amount = _outstanding_close(
        locked,
        status=Invoice.Status.PAID,
        against=Account.Kind.STRIPE_CLEARING,
        entry=("paid", "payment", f"payment {reference} of invoice {locked.number}"),
        actor=actor,
        now=now,
    )
    locked.amount_paid_micros += amount
    locked.payment_reference = reference
    locked.save()
    _append(
        locked,
        INVOICE_PAID,
        {"payment_reference": reference, "amount_micros": amount, "at": now.isoformat()},
        actor,
    )
    return locked


def _outstanding_close(
    locked: Invoice,
    *,
    status: str,
    against: str,
    entry: tuple[str, str, str],
    actor: str,
    now: datetime,
) -> int:
    """Settle what the invoice still owes against a platform account (clearing for a
    payment, adjustments for a write-off) and close it with ``status``; returns the
    amount. ``entry`` is the journal entry's id suffix, kind and description."""
    suffix, kind, description = entry
    amount = outstanding(locked)
    receivable = account_open(
        organization=locked.organization, kind=Account.Kind.RECEIVABLE, currency=locked.currency
    )
    other = platform_account(kind=against, currency=locked.currency)
    _post(
        f"invoice:{locked.key}:{suffix}",
        locked.currency,
        {other.pk: amount, receivable.pk: -amount},
        kind,
        description,
        actor,
    )
    locked.status = status
    locked.closed_at = now
    return amount


@retry_transaction
def invoice_mark_past_due(
    *, invoice: Invoice, actor: str = "payments", now: datetime | None = None
) -> Invoice:
    now = now or timezone.now()
    current = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if current.status == Invoice.Status.PAST_DUE:
        return current
    locked = _final(current, (Invoice.Status.OPEN,), "marked past due")
    locked.status = Invoice.Status.PAST_DUE
    locked.save(update_fields=["status"])
    _append(locked, INVOICE_PAST_DUE, {"at": now.isoformat()}, actor)
    return locked


@retry_transaction
def invoice_mark_uncollectible(
    *, invoice: Invoice, reason: str = "", actor: str = "payments", now: datetime | None = None
) -> Invoice:
    """Give up on what is owed: written off to the adjustments account (bad debt)."""
    now = now or timezone.now()
    current = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if current.status == Invoice.Status.UNCOLLECTIBLE:
        return current
    locked = _final(current, (Invoice.Status.OPEN, Invoice.Status.PAST_DUE), "marked uncollectible")
    amount = _outstanding_close(
        locked,
        status=Invoice.Status.UNCOLLECTIBLE,
        against=Account.Kind.ADJUSTMENTS,
        entry=(
            "written-off",
            "write_off",
            f"invoice {locked.number} uncollectible: {reason.strip()[:200] or 'written off'}",
        ),
        actor=actor,
        now=now,
    )
    locked.written_off_micros += amount
    locked.save()
    _append(
        locked,
        INVOICE_UNCOLLECTIBLE,
        {"amount_micros": amount, "reason": reason.strip()[:500], "at": now.isoformat()},
        actor,
    )
    return locked


@retry_transaction
def invoice_void(
    *, invoice: Invoice, reason: str, actor: str = "system", now: datetime | None = None
) -> Invoice:
    """Cancel an unpaid finalized invoice entirely: its number stays used; tax and
    rounding are reversed, what it charged comes off revenue, what prepaid credit
    paid goes back to the credit and what was owed comes off the receivable."""
    now = now or timezone.now()
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("voiding needs a reason", details={"field": "reason"})
    current = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if current.status == Invoice.Status.VOID:
        return current
    locked = _final(current, (Invoice.Status.OPEN, Invoice.Status.PAST_DUE), "voided")
    if locked.amount_paid_micros or locked.credit_notes.exists():
        raise Conflict("an invoice with payments or credit notes is corrected by a credit note")
    org, currency = locked.organization, locked.currency
    signed: dict[int, int] = defaultdict(int)
    signed[platform_account(kind=Account.Kind.TAX_PAYABLE, currency=currency).pk] += (
        locked.tax_micros
    )
    signed[platform_account(kind=Account.Kind.ROUNDING, currency=currency).pk] += (
        locked.rounding_micros
    )
    signed[platform_account(kind=Account.Kind.REVENUE, currency=currency).pk] += (
        locked.subtotal_exact_micros
    )
    signed[account_open(organization=org, kind=Account.Kind.CREDIT, currency=currency).pk] -= (
        locked.prepaid_applied_micros
    )
    signed[account_open(organization=org, kind=Account.Kind.RECEIVABLE, currency=currency).pk] -= (
        locked.amount_due_micros
    )
    _post(
        f"invoice:{locked.key}:void",
        currency,
        signed,
        "void",
        f"invoice {locked.number} void: {reason[:200]}",
        actor,
    )
    locked.status = Invoice.Status.VOID
    locked.closed_at = now
    locked.save()
    _append(locked, INVOICE_VOIDED, {"reason": reason[:500], "at": now.isoformat()}, actor)
    return locked


@retry_transaction
def credit_note_issue(
    *,
    invoice: Invoice,
    amount_micros: int,
    reason: str,
    key: str,
    actor: str = "system",
    now: datetime | None = None,
) -> CreditNote:
    """Correct a finalized invoice by ``amount_micros`` before tax (a whole number of
    cents). The tax on it is given back too. What the buyer still owes on the invoice
    is reduced first; the rest becomes prepaid credit. ``key`` makes it idempotent."""
    now = now or timezone.now()
    found = CreditNote.objects.filter(key=key).first()
    if found is not None:
        if found.invoice_id != invoice.pk or found.amount_micros != amount_micros:
            raise Conflict(
                f"credit note {key!r} exists with another body", details={"field": "key"}
            )
        return found
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a credit note needs a reason", details={"field": "reason"})
    locked = _final(
        Invoice.objects.select_for_update().get(pk=invoice.pk),
        (
            Invoice.Status.OPEN,
            Invoice.Status.PAST_DUE,
            Invoice.Status.PAID,
            Invoice.Status.UNCOLLECTIBLE,
        ),
        "credited",
    )
    currency = locked.currency
    step = MICROS // 10 ** CURRENCIES[currency]
    if (
        isinstance(amount_micros, bool)
        or not isinstance(amount_micros, int)
        or amount_micros <= 0
        or amount_micros % step
    ):
        raise InvalidInput(
            "amount must be a positive whole number of cents", details={"field": "amount"}
        )
    credited = sum(locked.credit_notes.values_list("amount_micros", flat=True))
    if credited + amount_micros > locked.subtotal_micros:
        raise InvalidInput(
            f"credit notes may total at most the invoice subtotal "
            f"{Money(locked.subtotal_micros, currency).format()}; "
            f"{Money(credited, currency).format()} is credited already",
            details={"field": "amount"},
        )
    tax = cents(rate_amount(amount_micros, locked.tax_rate_bps, BPS), currency)
    total = amount_micros + tax
    to_receivable = 0
    if locked.status in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE):
        to_receivable = min(total, outstanding(locked))
    to_credit = total - to_receivable
    number = _next_number("CN")
    org = locked.organization
    signed: dict[int, int] = defaultdict(int)
    signed[platform_account(kind=Account.Kind.REVENUE, currency=currency).pk] += amount_micros
    signed[platform_account(kind=Account.Kind.TAX_PAYABLE, currency=currency).pk] += tax
    signed[account_open(organization=org, kind=Account.Kind.RECEIVABLE, currency=currency).pk] -= (
        to_receivable
    )
    signed[account_open(organization=org, kind=Account.Kind.CREDIT, currency=currency).pk] -= (
        to_credit
    )
    position = _post(
        f"cn:{number}",
        currency,
        signed,
        "credit_note",
        f"credit note {number} on {locked.number}: {reason[:200]}",
        actor,
    )
    note = CreditNote.objects.create(
        invoice=locked,
        key=key[:240],
        issuer=locked.issuer,
        number=number,
        currency=currency,
        amount_micros=amount_micros,
        tax_micros=tax,
        total_micros=total,
        to_receivable_micros=to_receivable,
        to_credit_micros=to_credit,
        reason=reason[:500],
        entry_position=position or 0,
        issued_at=now,
        issued_by=actor[:200],
    )
    locked.credited_micros += total
    locked.save(update_fields=["credited_micros"])
    _append(
        locked,
        CREDIT_NOTE_ISSUED,
        {
            "credit_note": number,
            "note_key": note.key,
            "amount_micros": amount_micros,
            "tax_micros": tax,
            "to_receivable_micros": to_receivable,
            "to_credit_micros": to_credit,
            "reason": note.reason,
            "at": now.isoformat(),
        },
        actor,
    )
    return note


# --- fine-tune jobs -----------------------------------------------------------------


def minimum_transfer_id(organization_id: int, job: str) -> str:
    return f"ftmin:{organization_id}:{job}"


@retry_transaction
def fine_tune_job_close(*, organization: Organization, job: str, actor: str = "system") -> int:
    """A fine-tune job ended: its bill is ``fine_tune_quote`` of what rating charged,
    so a job that used less than the minimum is topped up to it (``ftmin:…``)."""
    _catch_up()
    currency = settings.TANDEM_CURRENCY
    accruals = list(
        UsageAccrual.objects.filter(
            buyer_id=organization.pk, product="fine_tune", subject=job
        ).exclude(transfer_id="")
    )
    if not accruals:
        raise NotFound(f"no fine-tune usage of job {job!r}", details={"job": job})
    first = min(accruals, key=lambda a: a.first_usage_id)
    rated = sum(a.amount_micros for a in accruals)
    quote = fine_tune_quote(
        model=first.model,
        training_type=first.training_type or "lora-sft",
        training_tokens=sum(a.quantity for a in accruals),
        rated_micros=rated,
    )
    top_up = quote.amount_micros - rated
    if top_up <= 0:
        return 0
    from billing.pricing import billing_terms_for

    postpaid = billing_terms_for(organization_ids=[organization.pk])[organization.pk].postpaid
    kind = Account.Kind.RECEIVABLE if postpaid else Account.Kind.CREDIT
    buyer = account_open(organization=organization, kind=kind, currency=currency)
    revenue = platform_account(kind=Account.Kind.REVENUE, currency=currency)
    entry = EntryRequest(
        transfer_id=minimum_transfer_id(organization.pk, job),
        currency=currency,
        legs=((buyer.pk, "D", top_up), (revenue.pk, "C", top_up)),
        kind="minimum",
        description=f"fine-tune {job}: minimum charge per job",
    )
    result = ledger_execute([entry], actor=actor)[0]
    if result.code == "exceeds_limit":  # prepaid credit short: the rest is owed
        receivable = account_open(
            organization=organization, kind=Account.Kind.RECEIVABLE, currency=currency
        )
        available = max(0, top_up - int(result.details.get("missing_micros", top_up)))
        legs = [(receivable.pk, "D", top_up - available), (revenue.pk, "C", top_up)]
        if available:
            legs.insert(0, (buyer.pk, "D", available))
        result = ledger_execute(
            [EntryRequest(entry.transfer_id, currency, tuple(legs), "minimum", entry.description)],
            actor=actor,
        )[0]  # type: ignore[arg-type]
    raise_for(result)
    return top_up


def invoice_job_issue(*, organization: Organization, job: str, actor: str = "system") -> Invoice:
    """On demand, the invoice of one closed fine-tune job, finalized at once."""
    currency = settings.TANDEM_CURRENCY
    key = job_key(organization.pk, job, currency)
    existing = Invoice.objects.filter(key=key).first()
    if existing is not None and existing.status != Invoice.Status.DRAFT:
        return existing
    billed = InvoiceLine.objects.filter(
        invoice__organization=organization, invoice__kind=Invoice.Kind.MONTHLY, job=job
    ).exclude(invoice__status=Invoice.Status.DRAFT)
    if billed.exists():
        raise Conflict(
            f"job {job!r} is billed on invoice {billed.first().invoice.number} already",  # type: ignore[union-attr]
            details={"job": job},
        )
    fine_tune_job_close(organization=organization, job=job, actor=actor)
    now = timezone.now()
    invoice = existing
    if invoice is None:
        try:
            with transaction.atomic():
                invoice = Invoice.objects.create(
                    key=key,
                    organization=organization,
                    kind=Invoice.Kind.JOB,
                    currency=currency,
                    period_start=now,
                    period_end=now,
                    job=job,
                    issuer=issuer(),
                    generated_at=now,
                    grace_ends_at=now,
                )
        except IntegrityError:
            # A concurrent request is issuing this job's invoice: asking again returns it.
            raise Conflict(
                f"the invoice of job {job!r} is being issued; ask again for it",
                details={"job": job},
            ) from None
    computed = invoice_compute(organization=organization, currency=currency, job=job)
    _apply_draft(invoice, computed, now)
    return invoice_finalize(invoice=invoice, actor=actor, now=now, close_usage=False)


# --- closing a month ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloseResult:
    period: date
    organizations: int
    drafts: int
    finalized: int
    already_final: int
    statements: int
    seconds: float


def buyers_with_charges(period: date, currency: str) -> list[int]:
    return sorted(_charged(period, currency))


def _charged(period: date, currency: str) -> dict[int, int]:
    """The buyers charged in the month -> how many usage accruals charged them (0 for
    those charged only by ledger entries: holds, minimums, corrections)."""
    start, end = month_bounds(period)
    counts = dict(
        UsageAccrual.objects.filter(period=period, currency=currency)
        .exclude(transfer_id="")
        .values("buyer_id")
        .annotate(n=Count("id"))
        .values_list("buyer_id", "n")
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT a.organization_id FROM billing_posting p "
            "JOIN billing_account a ON a.id = p.account_id "
            "WHERE a.kind IN ('credit', 'receivable') AND a.currency = %s AND p.side = 'D' "
            "AND p.recorded_at >= %s AND p.recorded_at < %s",
            [currency, start, end],
        )
        for (org,) in cursor.fetchall():
            counts.setdefault(org, 0)
    return counts


# What finalizing one org's invoice costs, beside what each of its usage accruals
# adds (lines, links, the entries' legs read): the invoice row and document, its
# ledger entry and its InvoiceFinalized event, worth some forty accruals.
CLOSE_ORG_WEIGHT = 40


def _close_chunks(orgs: list[int], accruals: dict[int, int]) -> list[list[int]]:
    """The orgs, in order, in as many chunks as ``CLOSE_CHUNK`` orgs to a chunk make,
    cut so that the chunks weigh the same (``CLOSE_ORG_WEIGHT`` per org plus one per
    usage accrual) rather than hold as many orgs: a month's few busy buyers would
    otherwise make one chunk several times the others' work, which the processes
    finalizing the chunks one after another would wait on. An org goes to the chunk
    its weight's middle falls in."""
    if not orgs:
        return []
    weights = [CLOSE_ORG_WEIGHT + accruals.get(org, 0) for org in orgs]
    count, total = -(-len(orgs) // CLOSE_CHUNK), sum(weights)
    chunks: dict[int, list[int]] = defaultdict(list)
    before = 0
    for org, weight in zip(orgs, weights, strict=True):
        # The chunk of (before + weight / 2) / (total / count), in integers.
        chunks[(2 * before + weight) * count // (2 * total)].append(org)
        before += weight
    return [chunks[index] for index in sorted(chunks)]


def period_close(
    *,
    period: date,
    finalize: bool | None = None,
    now: datetime | None = None,
    actor: str = "close_period",
    organization_ids: list[int] | None = None,
) -> CloseResult:
    """Close a month for every organization that was charged in it: drafts refreshed,
    then (once the grace period has ended, or when ``finalize`` says so) finalized,
    and the providers' statements written. Each org's draft is its own transaction,
    and finalizing goes in chunks of about the same work (``_close_chunks``), each one
    transaction with its reads and writes batched (``_finalize_month``): a run that
    stops half way is finished by running it again, and a finalized invoice is left
    as it is, so running it twice changes nothing."""
    started = time.monotonic()
    with _heap_frozen():
        result = _period_close(
            period=period,
            finalize=finalize,
            now=now or timezone.now(),
            actor=actor,
            organization_ids=organization_ids,
        )
    return dataclasses.replace(result, seconds=time.monotonic() - started)


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """Leave the objects alive before a close out of the cyclic collector's scans
    while it runs (``gc.freeze``): a close makes a few hundred thousand objects (rows,
    lines, documents), and every full collection they set off would otherwise walk
    the whole application's heap as well, a fifth of the close's Python time."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _period_close(
    *,
    period: date,
    finalize: bool | None,
    now: datetime,
    actor: str,
    organization_ids: list[int] | None,
) -> CloseResult:
    currency = settings.TANDEM_CURRENCY
    _, end = month_bounds(period)
    if end > now and finalize:
        raise InvalidInput(f"{period:%Y-%m} has not ended yet", details={"field": "period"})
    if finalize is None:
        finalize = now >= end + grace()
    _catch_up()
    # The month's buyers with their usage accruals: whom to close, and how to chunk them.
    charged = _charged(period, currency) if finalize or organization_ids is None else {}
    org_ids = organization_ids if organization_ids is not None else sorted(charged)
    drafts = finalized = already = written = 0
    if finalize:
        # Close every buyer's usage month first, then rate and accrue what came in
        # before: nothing can join the month after this, so the drafts are final.
        from metering.services import usage_periods_close

        usage_periods_close(organization_ids=org_ids, period=period)
        _catch_up()
        # Then finalize in chunks, each one transaction: a run that stops half way
        # is finished by running it again.
        chunks = _close_chunks(list(org_ids), charged)
        finalized, already, written = _finalize_chunks(
            chunks, period=period, currency=currency, now=now, actor=actor
        )
    for organization in [] if finalize else _organizations(list(org_ids)):
        invoice = invoice_draft_refresh(
            organization=organization, period=period, currency=currency, now=now
        )
        if invoice is None:
            continue
        if invoice.status != Invoice.Status.DRAFT:
            already += 1
            continue
        if finalize:
            invoice_finalize(invoice=invoice, actor=actor, now=now, close_usage=False)
            finalized += 1
        else:
            drafts += 1
    return CloseResult(period, len(org_ids), drafts, finalized, already, written, 0.0)


def _organizations(ids: list[int]) -> list[Organization]:
    """These orgs, in this order (a close's chunk: each process loads its own)."""
    wanted, wanted_params = _any(ids)
    found = {
        o.pk: o
        for o in Organization.objects.raw(
            f"SELECT * FROM {Organization._meta.db_table} WHERE id {wanted}", wanted_params
        )
    }
    return [found[org] for org in ids if org in found]


def _finalize_chunks(
    chunks: list[list[int]], *, period: date, currency: str, now: datetime, actor: str
) -> tuple[int, int, int]:
    """Finalize the chunks, then write the providers' statements. Returns (finalized,
    already final, statements). On PostgreSQL, outside any transaction, with more
    than one chunk: in ``CLOSE_WORKERS`` processes at once (``_finalize_in_processes``);
    otherwise here, in order, on this connection (inside a caller's transaction in
    particular, whose rows another connection could not see)."""
    from billing.statements import statements_close

    finalized_there = 0
    if len(chunks) > 1 and is_postgres() and not connection.in_atomic_block:
        finalized_there, already, statements, complete = _finalize_in_processes(
            chunks, period=period, currency=currency, now=now, actor=actor
        )
        if complete:
            return finalized_there, already, statements
        # A finalization elsewhere took numbers the processes had counted on: what
        # they committed stays (and is found final below), the rest is finalized
        # here, its numbers taken first.
    finalized = already = 0
    for chunk in chunks:
        done_here, final = _finalize_month(
            organizations=_organizations(chunk),
            period=period,
            currency=currency,
            now=now,
            actor=actor,
        )
        finalized += done_here
        already += final
    statements = statements_close(period=period, now=now)
    return finalized_there + finalized, already - finalized_there, statements


CLOSE_WORKERS = 2  # processes finalizing a close's chunks at once
CLOSE_WAIT_LIMIT_S = 600.0  # the longest a chunk waits for the one before


class _CloseAborted(Exception):
    """Another process of the close failed: this one stops (rolling back its chunk)."""


class _Numbering:
    """The order in which a close's chunks, finalized by several processes at once,
    number their invoices: chunk k's numbers follow chunk k-1's. Each chunk predicts
    its first number from the one before's (``first``) as soon as it knows how many
    it finalizes, so that it can write its invoices, documents and lines while the
    chunk before is still being written; it confirms them under the sequence's lock
    only after the chunk before has committed (``wait_turn``, ``_numbers_confirm``).

    No wait can close a cycle: a chunk waits here only for the chunks before it, and
    in the database never for a chunk after it (its rows, accounts and balances are
    its orgs' own, its numbers below the later chunks'; the sequence, the platform's
    balances and the event store's append lock it takes only after the chunk before
    has committed, before any later chunk can). A finalization elsewhere that takes a
    number meanwhile waits on, or is waited on by, chunks only in the database, which
    detects a deadlock; the chunk whose prediction no longer holds stops the
    processes (``_NumbersTaken``), and the close finishes in one.

    Shared between the processes (made before they fork): per chunk its predicted
    first number, its count, and how far it got (1: numbered, 2: committed)."""

    def __init__(self, chunks: int, context: Any) -> None:
        self._changed = context.Condition()
        self._first = context.RawArray("q", chunks)
        self._count = context.RawArray("q", chunks)
        self._state = context.RawArray("b", chunks)
        self._failed = context.RawValue("b", 0)
        self.chunk = 0  # the chunk this process works on

    def _wait(self, ready: Callable[[], bool]) -> None:
        # Every wait here is for a chunk before this one, which never waits on this
        # one in the database (see the class's docstring), so it ends. The limit is
        # a safety net: past it the processes stop and the close finishes in one.
        give_up = time.monotonic() + CLOSE_WAIT_LIMIT_S
        with self._changed:
            while not ready():
                if self._failed.value:
                    raise _CloseAborted("another process of the close failed")
                if time.monotonic() > give_up:
                    self._failed.value = 1
                    self._changed.notify_all()
                    raise _CloseAborted("waited too long for the chunk before")
                self._changed.wait(1.0)

    def first(self, count: int) -> int:
        """This chunk's first number, given that it numbers ``count`` invoices."""
        k = self.chunk
        if k == 0:
            first = _number_last("INV") + 1
        else:
            self._wait(lambda: self._state[k - 1] >= 1)
            first = self._first[k - 1] + self._count[k - 1]
        with self._changed:
            if self._state[k] and (self._first[k], self._count[k]) != (first, count):
                # Run again (a retried transaction), the chunk would number other
                # invoices than the chunk after it counted on.
                raise _NumbersTaken("a chunk's count changed between two attempts")
            self._first[k], self._count[k] = first, count
            self._state[k] = max(self._state[k], 1)
            self._changed.notify_all()
        return first

    def numbered(self, chunk: int) -> bool:
        """Whether that chunk has predicted its numbers (so the next can write)."""
        return chunk < 0 or self._state[chunk] >= 1

    def wait_turn(self) -> None:
        """Until the chunk before has committed."""
        k = self.chunk
        if k:
            self._wait(lambda: self._state[k - 1] >= 2)

    def wait_committed(self, chunk: int) -> None:
        """Until that chunk has committed (or a process of the close failed)."""
        with contextlib.suppress(_CloseAborted):
            self._wait(lambda: self._state[chunk] >= 2)

    def committed(self) -> None:
        with self._changed:
            self._state[self.chunk] = 2
            self._changed.notify_all()

    def fail(self) -> None:
        with self._changed:
            self._failed.value = 1
            self._changed.notify_all()


def _finalize_in_processes(
    chunks: list[list[int]], *, period: date, currency: str, now: datetime, actor: str
) -> tuple[int, int, int, bool]:
    """Finalize the chunks in ``CLOSE_WORKERS`` forked processes, each on its own
    connection, chunk k in process k mod ``CLOSE_WORKERS``: each computes its chunk
    and writes it while the others do theirs (no interpreter lock shared: Python and
    PostgreSQL on every core); only the numbers, ledger entries, events and commit
    of one chunk after another (see ``_Numbering``). This process writes the
    providers' statements meanwhile. Returns (finalized, already final, statements,
    complete): not complete when a finalization elsewhere took numbers the chunks had
    counted on (what was committed stays; the caller finishes the rest)."""
    import multiprocessing
    import traceback

    from django.db import connections

    from billing.statements import statements_close

    context = multiprocessing.get_context("fork")
    numbering = _Numbering(len(chunks), context)
    workers = min(CLOSE_WORKERS, len(chunks))

    def work(index: int, results: Any) -> None:
        finalized = already = 0
        mine = list(range(index, len(chunks), workers))
        computed: dict[int, _Ahead] = {}
        try:
            for n, k in enumerate(mine):
                numbering.chunk = k
                if k not in computed:
                    computed[k] = _compute_ahead(chunks[k], currency, period)
                if n + 1 < len(mine) and not numbering.numbered(k - 1):
                    # This chunk could not be written yet: the next one of this
                    # process is computed meanwhile (at the start, mostly).
                    following = mine[n + 1]
                    computed[following] = _compute_ahead(chunks[following], currency, period)
                ahead = computed.pop(k)
                done, final = _finalize_month(
                    organizations=_organizations(chunks[k]),
                    period=period,
                    currency=currency,
                    now=now,
                    actor=actor,
                    ahead=ahead,
                    numbering=numbering,
                )
                numbering.committed()
                finalized += done
                already += final
            results.send(("done", finalized, already))
        except (_NumbersTaken, _CloseAborted) as exc:
            numbering.fail()
            results.send(("numbers", finalized, already, repr(exc)))
        except BaseException:
            numbering.fail()
            results.send(("error", finalized, already, traceback.format_exc()))
        finally:
            connections.close_all()

    # The children open their own connections: none may be inherited open.
    connections.close_all()
    pipes = [context.Pipe(duplex=False) for _ in range(workers)]
    processes = [
        context.Process(target=work, args=(index, pipes[index][1]), name=f"close-{index}")
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        # Once the first chunk is in: until then the chunks' processes have the cores.
        numbering.wait_committed(0)
        statements = statements_close(period=period, now=now)
    finally:
        connections.close_all()
        outcomes = []
        for process, (receiver, _) in zip(processes, pipes, strict=True):
            process.join()
            outcomes.append(
                receiver.recv()
                if receiver.poll()
                else ("error", 0, 0, f"{process.name} exited with {process.exitcode}")
            )
    errors = [outcome[3] for outcome in outcomes if outcome[0] == "error"]
    if errors:
        raise RuntimeError("closing the month failed in a worker process:\n" + errors[0])
    complete = not any(outcome[0] == "numbers" for outcome in outcomes)
    if not complete:
        logger.warning("period close: numbers taken meanwhile, finishing in one process")
    return (
        sum(outcome[1] for outcome in outcomes),
        sum(outcome[2] for outcome in outcomes),
        statements,
        complete,
    )


# --- replay -------------------------------------------------------------------------


def invoices_rebuild() -> int:
    """Rebuild the accruals and every invoice from the event store alone: the accrual
    follower replays the usage batches from position 0, then each invoice's events
    are applied in order, a finalized invoice recomputed as of its finalization and
    checked against the hash its event recorded. Returns the invoices rebuilt."""
    from billing.accrual import usage_accruals
    from core.followers import followers_run_until_idle

    with transaction.atomic():
        InvoiceLineEntry.objects.all().delete()
        InvoiceLine.objects.all().delete()
        CreditNote.objects.all().delete()
        Invoice.objects.all().delete()
        UsageAccrual.objects.all().delete()
        FollowerPosition.objects.filter(consumer=usage_accruals.name).update(position=0)
    followers_run_until_idle([usage_accruals])
    rebuilt = 0
    with transaction.atomic():
        events = Event.objects.filter(stream_type=INVOICE_STREAM).order_by("position")
        for event in events.iterator():
            _replay_one(event)
            rebuilt += event.type == INVOICE_FINALIZED
    return rebuilt


def _replay_one(event: Event) -> None:
    payload = event.payload
    if event.type == INVOICE_FINALIZED:
        organization = Organization.objects.get(pk=payload["organization"])
        invoice = Invoice(
            key=payload["key"],
            organization=organization,
            kind=payload["kind"],
            currency=payload["currency"],
            period_start=datetime.fromisoformat(payload["period_start"]),
            period_end=datetime.fromisoformat(payload["period_end"]),
            job=payload["job"],
            issuer=payload["issuer"],
            number=payload["number"],
            generated_at=datetime.fromisoformat(payload["finalized_at"]),
            grace_ends_at=datetime.fromisoformat(payload["period_end"]) + grace(),
            finalized_at=datetime.fromisoformat(payload["finalized_at"]),
            due_at=datetime.fromisoformat(payload["due_at"]),
        )
        computed = invoice_compute(
            organization=organization,
            currency=invoice.currency,
            period=invoice.period_start.date() if invoice.kind == Invoice.Kind.MONTHLY else None,
            job=invoice.job if invoice.kind == Invoice.Kind.JOB else None,
            as_of_position=payload["as_of_position"],
        )
        buyer = payload["buyer"]
        totals = totals_of(computed, invoice.currency, buyer["tax_rate_bps"])
        prepaid = payload["prepaid_applied_micros"]
        document = _document(
            invoice=invoice,
            computed=computed,
            totals=totals,
            buyer=buyer,
            number=invoice.number,
            finalized_at=payload["finalized_at"],
            due_at=payload["due_at"],
            prepaid_applied=prepaid,
        )
        digest = hashlib.sha256(canonical(document)).hexdigest()
        if digest != payload["document_sha256"]:
            raise RuntimeError(f"replayed invoice {invoice.number} differs from the one finalized")
        _set_final(
            invoice,
            number=payload["number"],
            finalized_at=datetime.fromisoformat(payload["finalized_at"]),
            due_at=datetime.fromisoformat(payload["due_at"]),
            totals=totals,
            prepaid=prepaid,
            document=document,
            digest=digest,
        )
        invoice.save()
        _write_lines(invoice, computed)
        return
    invoice = Invoice.objects.get(key=payload["key"])
    at = datetime.fromisoformat(payload["at"]) if "at" in payload else event.recorded_at
    if event.type == INVOICE_PAID:
        invoice.status = Invoice.Status.PAID
        invoice.amount_paid_micros += payload["amount_micros"]
        invoice.payment_reference = payload["payment_reference"]
        invoice.closed_at = at
    elif event.type == INVOICE_PAST_DUE:
        invoice.status = Invoice.Status.PAST_DUE
    elif event.type == INVOICE_UNCOLLECTIBLE:
        invoice.status = Invoice.Status.UNCOLLECTIBLE
        invoice.written_off_micros += payload["amount_micros"]
        invoice.closed_at = at
    elif event.type == INVOICE_VOIDED:
        invoice.status = Invoice.Status.VOID
        invoice.closed_at = at
    elif event.type == CREDIT_NOTE_ISSUED:
        entry = Event.objects.get(stream_id=ev.entry_stream_id(f"cn:{payload['credit_note']}"))
        CreditNote.objects.create(
            invoice=invoice,
            key=payload["note_key"],
            issuer=invoice.issuer,
            number=payload["credit_note"],
            currency=invoice.currency,
            amount_micros=payload["amount_micros"],
            tax_micros=payload["tax_micros"],
            total_micros=payload["amount_micros"] + payload["tax_micros"],
            to_receivable_micros=payload["to_receivable_micros"],
            to_credit_micros=payload["to_credit_micros"],
            reason=payload["reason"],
            entry_position=entry.position,
            issued_at=at,
            issued_by=event.metadata.get("actor", ""),
        )
        invoice.credited_micros += payload["amount_micros"] + payload["tax_micros"]
    invoice.save()


# --- on request (the API) -------------------------------------------------------------

# The marketplace's fine-tune job streams (marketplace.workloads.events), which billing
# may read through the event store but not import: a job's terminal event.
FINE_TUNE_JOB_STREAM = "finetune_job"
FINE_TUNE_JOB_FINISHED = "FineTuneJobFinished"
BILLING_PROFILE_STREAM = "billing.profile"
BILLING_PROFILE_SET = "BillingProfileSet"
MAX_ADDRESS_LENGTH = 1000


def invoice_draft_current(
    *, organization: Organization, period: date, now: datetime | None = None
) -> Invoice | None:
    """The org's invoice of a month as it stands now, for its members to read: the
    draft recomputed from the journal (a finalized invoice as it is); None when the
    month charged nothing yet. A month that has not begun is refused."""
    now = now or timezone.now()
    start, _ = month_bounds(period)
    if start > now:
        raise InvalidInput(f"{period:%Y-%m} has not begun yet", details={"field": "period"})
    try:
        return invoice_draft_refresh(organization=organization, period=period, now=now)
    except IntegrityError:
        # A concurrent request created this month's draft first: refresh that one.
        return invoice_draft_refresh(organization=organization, period=period, now=now)


def invoice_finalize_requested(
    *, invoice: Invoice, actor: str, now: datetime | None = None
) -> Invoice:
    """Finance finalizes a draft ahead of the close. A monthly draft only once its month
    has ended: finalizing closes the buyer's usage month, and usage of the rest of a
    running month would move to the next one. A final invoice is returned as it is."""
    now = now or timezone.now()
    if (
        invoice.status == Invoice.Status.DRAFT
        and invoice.kind == Invoice.Kind.MONTHLY
        and invoice.period_end > now
    ):
        raise Conflict(
            f"{invoice.period_start:%Y-%m} has not ended yet: its draft is finalized "
            "after the month ends",
            details={"invoice": invoice.pk, "period": f"{invoice.period_start:%Y-%m}"},
        )
    return invoice_finalize(invoice=invoice, actor=actor, now=now)


def fine_tune_job_finished(*, organization_id: int, job: str) -> bool:
    """Whether the marketplace recorded the org's fine-tune job as ended (succeeded,
    failed or cancelled)."""
    return any(
        payload.get("organization_id") == organization_id
        for payload in Event.objects.filter(
            stream_id=f"{FINE_TUNE_JOB_STREAM}:{job}", type=FINE_TUNE_JOB_FINISHED
        ).values_list("payload", flat=True)
    )


def invoice_job_request(*, organization: Organization, job: str, actor: str) -> Invoice:
    """The invoice of one fine-tune job, on request, once the job has ended (until then
    its usage is still arriving); the one issued before, if any."""
    job = (job or "").strip()
    if not job or len(job) > 200:
        raise InvalidInput("job must be a fine-tune job id", details={"field": "job"})
    if not fine_tune_job_finished(organization_id=organization.pk, job=job):
        raise Conflict(
            f"fine-tune job {job!r} of {organization.name} has not finished: a job is "
            "invoiced on its own once it has ended",
            details={"field": "job", "job": job},
        )
    return invoice_job_issue(organization=organization, job=job, actor=actor)


def _text(value: str, field_name: str, limit: int) -> str:
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidInput(f"{field_name} must be text", details={"field": field_name})
    value = value.strip()
    if len(value) > limit:
        raise InvalidInput(
            f"{field_name} must be at most {limit} characters", details={"field": field_name}
        )
    return value


@retry_transaction
def billing_profile_set(
    *,
    organization: Organization,
    legal_name: str,
    address: str,
    tax_id: str,
    tax_rate_bps: int,
    tax_label: str = "",
    actor: str,
) -> BillingProfile:
    """Set who an org's invoices are addressed to and the tax rate they charge (basis
    points, 0 to 10,000). Invoices finalized from now on use it; finalized ones keep
    the profile their InvoiceFinalized event recorded. The change is an event, so who
    set which rate when is on record."""
    if (
        isinstance(tax_rate_bps, bool)
        or not isinstance(tax_rate_bps, int)
        or not 0 <= tax_rate_bps <= BPS
    ):
        raise InvalidInput(
            f"tax_rate_bps must be a whole number of basis points from 0 to {BPS} (1,900 = 19%)",
            details={"field": "tax_rate_bps"},
        )
    profile, _ = BillingProfile.objects.select_for_update().get_or_create(organization=organization)
    profile.legal_name = _text(legal_name, "legal_name", 200)
    profile.address = _text(address, "address", MAX_ADDRESS_LENGTH)
    profile.tax_id = _text(tax_id, "tax_id", 64)
    profile.tax_rate_bps = tax_rate_bps
    profile.tax_label = _text(tax_label, "tax_label", 32) or "Tax"
    profile.save()
    stream_id = f"billing_profile:{organization.pk}"
    event_append(
        stream_type=BILLING_PROFILE_STREAM,
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[
            NewEvent(
                BILLING_PROFILE_SET,
                {
                    "organization": organization.pk,
                    "legal_name": profile.legal_name,
                    "address": profile.address,
                    "tax_id": profile.tax_id,
                    "tax_rate_bps": profile.tax_rate_bps,
                    "tax_label": profile.tax_label,
                },
            )
        ],
        tenant_id=organization.pk,
        metadata={"actor": actor},
    )
    return profile
