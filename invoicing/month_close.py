"""The month close (``period_close``): every buyer's monthly invoice finalized, in
chunks, and the providers' statements closed.

This module is the close's machinery, kept apart from the rules it applies (those
are calculations.py, settlement.py, documents.py): chunks sized by their accruals,
invoices computed ahead of each chunk's transaction, rows written with COPY, and
chunks finalized in worker processes whose invoice numbers are predicted and
confirmed under the sequence's lock, so numbering stays gap-free and in order
(bench/close.py holds it to <= 2x a plain GROUP BY). It is long because these
parts only make sense together."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection
from django.db.models import Count, Max
from django.utils import timezone

from core.collector import collector_paused
from core.db import (
    is_postgres,
    retry_transaction,
    server_cursor,
)
from core.errors import InvalidInput
from core.eventstore import (
    EVENTS_INSERT_CTE,
    EventRow,
    events_cte_rows_encoded,
    events_insert,
)
from core.models import Event, Organization
from invoicing.amounts import _MoneyTexts
from invoicing.calculations import _compute_monthly, _jobs_alone
from invoicing.documents import _document_json, _document_lines_json, _JsonStrings, _profiles
from invoicing.drafts import invoice_draft_refresh
from invoicing.events import INVOICE_STREAM
from invoicing.finalization import (
    _buyer_accounts,
    _buyer_accounts_open,
    _catch_up,
    _entry_request,
    _finalized_event,
    _invoice_new,
    _set_final,
    invoice_finalize,
)
from invoicing.lines import Computed
from invoicing.models import (
    Invoice,
    UsageAccrual,
)
from invoicing.numbering import (
    _next_numbers,
    _number_last,
    _numbers,
    _numbers_confirm,
    _NumbersTaken,
)
from invoicing.periods import due_after, grace, issuer, month_bounds, monthly_key
from invoicing.queries import _any, _select
from invoicing.settlement import Settlement, settle, settlement_legs
from invoicing.statements import statements_close
from invoicing.writers import _invoices_write, _write_lines_many
from ledger.models import Account, Balance
from ledger.services import EntryRequest, ledger_execute, platform_account, raise_for
from metering.services import usage_periods_close

logger = logging.getLogger(__name__)


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


def _compute_ahead(
    org_ids: list[int], currency: str, period: date, platform: tuple[int, int]
) -> _Ahead:
    """What ``_finalize_month`` will need of these orgs' invoices that it can have
    before its transaction: their lines, and their documents' lines. Orgs whose
    invoice is final already are left out (a close run again computes nothing).
    ``platform``: what ``_platform`` gives, read once for the close."""
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
    strings, texts = _JsonStrings(), _MoneyTexts(currency)
    for found in computed.values():
        found.document_lines_json = _document_lines_json(found, currency, strings, texts)
    return _Ahead(as_of, jobs_alone, computed, platform)


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
    settled: dict[int, Settlement] = {}
    missing: list[tuple[int, str]] = []
    for organization in todo:
        credit = accounts.get((organization.id, Account.Kind.CREDIT))
        settlement = settle(
            computed[organization.id],
            currency=currency,
            tax_rate_bps=buyers[organization.id]["tax_rate_bps"],
            available_credit_micros=available.get(credit, 0),
        )
        settled[organization.id] = settlement
        if (
            settlement.needs_receivable
            and (organization.id, Account.Kind.RECEIVABLE) not in accounts
        ):
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
            settlement = settled[organization.id]
            totals, apply = settlement.totals, settlement.applied_micros
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
            signed = settlement_legs(
                settlement,
                receivable=accounts.get((organization.id, Account.Kind.RECEIVABLE)),
                credit=accounts.get((organization.id, Account.Kind.CREDIT)),
                rounding=rounding,
                tax_payable=tax_payable,
            )
            entry = _entry_request(
                f"invoice:{key}",
                currency,
                signed,
                "invoice",
                f"invoice {number}: rounding to cents, tax, prepaid credit applied",
            )
            if entry is not None:
                entries.append(entry)
            prepaid = settlement.prepaid_micros
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
            finalized = _finalized_event(
                invoice, number, found, totals, buyer, prepaid, apply, digest, finalized_at, due_at
            )
            stream_id = finalized.stream_id()
            events.append(
                EventRow(
                    stream_type=INVOICE_STREAM,
                    stream_id=stream_id,
                    version=versions.get(stream_id, 0) + 1,
                    type=finalized.type,
                    payload=finalized.payload(),
                    schema_version=finalized.schema_version,
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
    # The objects alive before the close are left out of every scan, and the
    # chunks' own are collected once each is written (_chunk_collected).
    with collector_paused(freeze=True):
        result = _period_close(
            period=period,
            finalize=finalize,
            now=now or timezone.now(),
            actor=actor,
            organization_ids=organization_ids,
        )
    return dataclasses.replace(result, seconds=time.monotonic() - started)


def _chunk_collected() -> None:
    """Reclaim any reference cycle the chunk just written left. With the automatic
    collections paused nothing leaves the youngest generation, and what is older
    than the close is frozen, so this walks only what the close made since the last
    time it was called (mostly the next chunk, when it was computed ahead)."""
    if not gc.isenabled():
        gc.collect(0)


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


def _organizations(ids: list[int], *, names_only: bool = False) -> list[Organization]:
    """These orgs, in this order (a close's chunk: each process loads its own).
    ``names_only``: their ids and names alone, the other fields deferred, which is
    all a chunk's finalization reads of them (10,000 orgs' creation times cost a
    close a tenth of a second, each a timestamp parsed in Python)."""
    wanted, wanted_params = _any(ids)
    columns = "id, name" if names_only else "*"
    found = {
        o.pk: o
        for o in Organization.objects.raw(
            f"SELECT {columns} FROM {Organization._meta.db_table} WHERE id {wanted}",
            wanted_params,
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
            organizations=_organizations(chunk, names_only=True),
            period=period,
            currency=currency,
            now=now,
            actor=actor,
        )
        finalized += done_here
        already += final
        _chunk_collected()
    statements = statements_close(period=period, now=now)
    return finalized_there + finalized, already - finalized_there, statements


CLOSE_WORKERS = 2  # processes finalizing a close's chunks at once
# The planner settings of a finalizing process's connection (``_lookup_plans``).
CLOSE_PLANNER_SETTINGS = {"random_page_cost": "1.1", "max_parallel_workers_per_gather": "0"}


def _lookup_plans() -> None:
    """Set this process's connection (its own, made for the close) to plan a chunk's
    reads as the lookups they are: by lists of a thousand buyers, their accounts,
    a few thousand journal entries. With the default cost of a random page read
    (4, for disks that seek; the month's rows are in memory by its close) the
    planner scanned whole tables instead (the journal's events for the entries'
    legs, the postings for the buyers' charges: two to six times the time of
    reading them by their indexes), in parallel workers that took the cores from
    the close's own processes; each process of the close is already one core's
    worth of work."""
    settings_sql = ", ".join(["set_config(%s, %s, false)"] * len(CLOSE_PLANNER_SETTINGS))
    with connection.wrap_database_errors:
        server_cursor().execute(
            f"SELECT {settings_sql}",
            [value for item in CLOSE_PLANNER_SETTINGS.items() for value in item],
        )


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

    context = multiprocessing.get_context("fork")
    numbering = _Numbering(len(chunks), context)
    workers = min(CLOSE_WORKERS, len(chunks))
    platform = _platform(currency)  # read (or opened) once, not by each chunk

    def work(index: int, results: Any) -> None:
        finalized = already = 0
        mine = list(range(index, len(chunks), workers))
        computed: dict[int, _Ahead] = {}
        try:
            _lookup_plans()
            for n, k in enumerate(mine):
                numbering.chunk = k
                if k not in computed:
                    computed[k] = _compute_ahead(chunks[k], currency, period, platform)
                if n + 1 < len(mine) and not numbering.numbered(k - 1):
                    # This chunk could not be written yet: the next one of this
                    # process is computed meanwhile (at the start, mostly).
                    following = mine[n + 1]
                    computed[following] = _compute_ahead(
                        chunks[following], currency, period, platform
                    )
                ahead = computed.pop(k)
                done, final = _finalize_month(
                    organizations=_organizations(chunks[k], names_only=True),
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
                _chunk_collected()
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
