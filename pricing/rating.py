"""Rating: usage into journal entries, exactly once, in order.

The follower ``billing.rating`` follows metering's ``UsageRecorded`` events (one per
ingested batch, in commit order: see metering.services for why events and not the
usage table). For each, in the follower's transaction (so the tracking position and
the journal entries commit together, or neither does):

1. the batch's usage rows are loaded and each is rated alone by ``rate_usage``: the
   price table gives an integer rate (``pricing.book.rate_for``) and the amount is
   ``quantity * rate / unit`` rounded half-even to a micro-unit, once. (On
   PostgreSQL the rows come summed up by what prices them, with their quantities, so
   one rate lookup serves many rows; each quantity is still rounded alone.)
2. the amounts are summed per buyer (tokens: into platform revenue) and per buyer and
   provider (GPU-seconds of a lease: the provider's payable, plus the platform fee);
3. one journal entry per group is posted through ``ledger_execute``, with the transfer
   id ``usage:<first usage row id of the group>``: a replay after a crash, or after the
   tracking row was rewound, is answered ``replayed`` by the ledger and posts nothing;
4. the buyer side is the prepaid credit account, or the receivable for postpaid orgs
   (``pricing.terms.billing_terms_for``). When prepaid credit cannot cover an
   entry, what it can cover comes from credit and the rest goes to the receivable,
   owed and invoiced — usage that happened is never dropped, and the credit account
   never passes its limit (no silent overdraft);
5. when a prepaid buyer's available credit has reached its floor, a
   ``CreditExhausted`` event is appended (stream ``credit:<account id>``, once per
   exhaustion: keyed by the account's credits posted so far, so a top-up starts a new
   episode). The marketplace and the runtime follow it and pause or stop the buyer's
   running work, as the buyer's terms say.

Several batches go in one transaction when the follower is behind (up to 25, its
``batch_size``): their rows are read and rated first, then every batch's entries are
posted in one ``ledger_execute`` — still one entry per batch and group, with the same
transfer ids, so how batches are grouped into transactions changes nothing in the
ledger. The entries take the event store's append lock, held to commit; since all
reading and rating is done before, that is from the ledger write to the commit and
no longer, and ingestion (which appends UsageRecorded) waits no longer than that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import F, Q

from core.db import is_postgres
from core.eventstore import NewEvent, RecordedEvent, event_append
from core.followers import Follower, register
from core.models import Event, Organization
from core.money import rate_amount
from ledger.models import Account, Balance
from ledger.services import EntryRequest, LedgerResult, account_open, ledger_execute
from metering import events as metering_events
from metering.models import UsageEvent
from metering.selectors import (
    UsageForRating,
    UsageRatingSummary,
    usage_for_rating,
    usage_rating_summaries,
)
from pricing.book import BPS, Rate, rate_for
from pricing.events import CREDIT_EXHAUSTED, CREDIT_STREAM, CreditExhausted
from pricing.lease_holds import leases_settled_by_hold
from pricing.terms import billing_terms_for

logger = logging.getLogger(__name__)

ACTOR = "rating"


class RatingError(RuntimeError):
    """A usage batch could not be posted: the follower stops here, loudly, rather
    than skip it (it retries the same batch when restarted)."""


# --- the rating function ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rated:
    amount_micros: int  # what the buyer pays
    provider_micros: int = 0  # of which the provider's share
    fee_micros: int = 0  # of which the platform fee on a lease
    provider_id: int | None = None

    @property
    def revenue_micros(self) -> int:
        return self.amount_micros - self.provider_micros - self.fee_micros


PriceLookup = Callable[[str, Mapping[str, object], datetime], Rate]


def rate_usage(
    *,
    usage_type: str,
    quantity: int,
    dimensions: Mapping[str, object],
    at: datetime,
    price: PriceLookup = rate_for,
) -> Rated:
    """One usage event's amount: rated once, half-even, to a micro-unit."""
    return rate_quantity(price(usage_type, dimensions, at), quantity, dimensions)


def rate_quantity(rate: Rate, quantity: int, dimensions: Mapping[str, object]) -> Rated:
    """``rate_usage`` with the rate already looked up."""
    return rate_quantities(rate, (quantity,), dimensions)


def rate_quantities(
    rate: Rate, quantities: Sequence[int], dimensions: Mapping[str, object]
) -> Rated:
    """Many events' amounts at one rate, summed: each rated alone (its own half-even
    rounding, and its own fee on a lease), as ``rate_usage`` rates it."""
    amounts = [rate_amount(quantity, rate.rate_micros, rate.unit) for quantity in quantities]
    amount = sum(amounts)
    if rate.payee == "provider":
        fee = sum(rate_amount(each, rate.fee_bps, BPS) for each in amounts)
        provider = int(dimensions["provider"])  # type: ignore[call-overload]
        return Rated(amount + fee, amount, fee, provider)
    return Rated(amount)


# --- the follower -----------------------------------------------------------


@dataclass(slots=True)
class _Group:
    first_usage_id: int
    buyer_id: int
    provider_id: int | None
    events: int = 0
    amount: int = 0
    revenue: int = 0
    provider: int = 0
    fee: int = 0

    def add(self, rated: Rated, events: int = 1) -> None:
        self.events += events
        self.amount += rated.amount_micros
        self.revenue += rated.revenue_micros
        self.provider += rated.provider_micros
        self.fee += rated.fee_micros


def _group_for(
    groups: dict[tuple[int, int | None], _Group], first_id: int, buyer_id: int, rated: Rated
) -> _Group:
    key = (buyer_id, rated.provider_id)
    group = groups.get(key)
    if group is None:
        group = groups[key] = _Group(first_id, buyer_id, rated.provider_id)
    return group


def groups_for(lines: list[UsageForRating], price: PriceLookup = rate_for) -> list[_Group]:
    """Rated lines summed per (buyer, provider); in the order of their first row."""
    groups: dict[tuple[int, int | None], _Group] = {}
    for line in lines:
        rated = rate_usage(
            usage_type=line.type,
            quantity=line.quantity,
            dimensions=line.dimensions,
            at=line.occurred_at,
            price=price,
        )
        _group_for(groups, line.id, line.buyer_id, rated).add(rated)
    return sorted(groups.values(), key=lambda g: g.first_usage_id)


def _summary_rate(summary: UsageRatingSummary) -> Rate | None:
    """The one rate of all the summary's rows, or None when the price changed between
    its first and last row (then its rows are rated one by one)."""
    rate = rate_for(summary.type, summary.dimensions, summary.first_at)
    if summary.last_at != summary.first_at and (
        rate_for(summary.type, summary.dimensions, summary.last_at) != rate
    ):
        return None
    return rate


def _groups_per_row(event: RecordedEvent) -> list[_Group]:
    lines = usage_for_rating(ranges=event.payload["usage_ranges"])
    _check_count(event, len(lines))
    return groups_for(_without_lease_settled(lines))


def _check_count(event: RecordedEvent, found: int) -> None:
    if found != event.payload["count"]:
        raise RatingError(
            f"{event.stream_id} names {event.payload['count']} usage rows; {found} were found"
        )


def batch_groups(events: Sequence[RecordedEvent]) -> list[list[_Group]]:
    """Each UsageRecorded batch's groups, as ``groups_for`` its rows would give them.

    On PostgreSQL the rows of all the batches come summed up by SQL (one query;
    ``metering.selectors.usage_rating_summaries``) and each summary is rated at one
    rate, each quantity still rounded alone — the same amounts, without a Python
    object per row. A batch whose prices changed between its rows is rated row by
    row."""
    if not is_postgres():
        return [_groups_per_row(event) for event in events]
    summaries = usage_rating_summaries(batches=[e.payload["usage_ranges"] for e in events])
    by_batch: list[list[UsageRatingSummary]] = [[] for _ in events]
    for summary in summaries:
        by_batch[summary.batch].append(summary)
    settled = leases_settled_by_hold({s.lease for s in summaries if s.lease is not None})
    found = []
    for event, batch in zip(events, by_batch, strict=True):
        _check_count(event, sum(len(s.quantities) for s in batch))
        rates = [_summary_rate(summary) for summary in batch]
        if None in rates:
            found.append(_groups_per_row(event))
            continue
        groups: dict[tuple[int, int | None], _Group] = {}
        for summary, rate in zip(batch, rates, strict=True):
            if summary.lease is not None and summary.lease in settled:
                continue
            rated = rate_quantities(rate, summary.quantities, summary.dimensions)  # type: ignore[arg-type]
            group = _group_for(groups, summary.first_id, summary.buyer_id, rated)
            group.add(rated, len(summary.quantities))
        found.append(sorted(groups.values(), key=lambda g: g.first_usage_id))
    return found


def usage_transfer_id(first_usage_id: int) -> str:
    return f"usage:{first_usage_id}"


class _Accounts:
    """Account ids for one batch, opened on first use."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self._ids: dict[tuple[int | None, str], int] = {}

    def load(self, org_ids: set[int]) -> None:
        """These orgs' accounts and the platform's, in one query."""
        for org_id, kind, pk in Account.objects.filter(
            Q(organization_id__in=org_ids) | Q(organization__isnull=True), currency=self.currency
        ).values_list("organization_id", "kind", "pk"):
            self._ids[(org_id, kind)] = pk

    def get(self, org_id: int | None, kind: str) -> int:
        key = (org_id, kind)
        if key not in self._ids:
            org = Organization.objects.get(pk=org_id) if org_id is not None else None
            self._ids[key] = account_open(organization=org, kind=kind, currency=self.currency).pk
        return self._ids[key]


def _entry(group: _Group, debit_legs: tuple, accounts: _Accounts, batch: str) -> EntryRequest:
    legs = list(debit_legs)
    if group.revenue:
        legs.append((accounts.get(None, Account.Kind.REVENUE), "C", group.revenue))
    if group.provider:
        legs.append((accounts.get(group.provider_id, Account.Kind.PAYABLE), "C", group.provider))
    if group.fee:
        legs.append((accounts.get(None, Account.Kind.FEES), "C", group.fee))
    return EntryRequest(
        transfer_id=usage_transfer_id(group.first_usage_id),
        currency=accounts.currency,
        legs=tuple(legs),
        kind="usage",
        description=f"usage: {group.events} events of {batch}"
        + (f", lease GPU time from provider {group.provider_id}" if group.provider_id else ""),
    )


def rate_batches(events: Sequence[RecordedEvent]) -> int:
    """Rate UsageRecorded batches into the ledger, in order, as one ledger call:
    still one entry per batch and group, with the batch's transfer ids, so how many
    batches go together changes nothing in the ledger. Return the entries posted."""
    if not events:
        return 0
    batches = [
        (event, group)
        for event, groups in zip(events, batch_groups(events), strict=True)
        for group in groups
        if group.amount > 0
    ]
    if not batches:
        return 0
    accounts = _Accounts(settings.TANDEM_CURRENCY)
    buyers = {g.buyer_id for _, g in batches}
    accounts.load(buyers | {g.provider_id for _, g in batches if g.provider_id is not None})
    terms = billing_terms_for(organization_ids=buyers)
    entries = []
    for event, group in batches:
        kind = Account.Kind.RECEIVABLE if terms[group.buyer_id].postpaid else Account.Kind.CREDIT
        debit = ((accounts.get(group.buyer_id, kind), "D", group.amount),)
        entries.append(_entry(group, debit, accounts, event.stream_id))
    results = ledger_execute(entries, actor=ACTOR)
    posted = 0
    for (event, group), entry, result in zip(batches, entries, results, strict=True):
        if result.code == "exceeds_limit":
            result = _post_split(group, accounts, event.stream_id)
        posted += _check(entry, result)
    prepaid = {g.buyer_id for _, g in batches if not terms[g.buyer_id].postpaid}
    if prepaid:
        _tell_exhausted(prepaid, accounts, terms)
    return posted


def _without_lease_settled(lines: list[UsageForRating]) -> list[UsageForRating]:
    """GPU-seconds of a marketplace lease are billed when the lease's hold is settled
    (pricing.lease_holds): rating them too would bill them twice. A lease is known by its
    usage subject having a lease hold; the usage rows stay, for meters and reports."""
    gpu_ids = [line.id for line in lines if line.type == "gpu.seconds"]
    if not gpu_ids:
        return lines
    subjects = dict(
        UsageEvent.objects.filter(pk__in=gpu_ids, subject_kind="lease").values_list(
            "pk", "subject_id"
        )
    )
    settled = leases_settled_by_hold(set(subjects.values()))
    if not settled:
        return lines
    return [line for line in lines if subjects.get(line.id) not in settled]


def _post_split(group: _Group, accounts: _Accounts, batch: str) -> LedgerResult:
    """Credit covers what it can (down to its limit); the rest is owed (receivable).
    Asked again first: an earlier entry of the batch may have used credit since. The
    balance rows stay locked by this transaction from then on, so the available
    amount the rejection reports still holds for the split."""
    credit = accounts.get(group.buyer_id, Account.Kind.CREDIT)
    full = _entry(group, ((credit, "D", group.amount),), accounts, batch)
    result = ledger_execute([full], actor=ACTOR)[0]
    if result.code != "exceeds_limit":
        return result
    covered = max(0, group.amount - int(result.details["missing_micros"]))
    debit = [(credit, "D", covered)] if covered else []
    debit.append(
        (accounts.get(group.buyer_id, Account.Kind.RECEIVABLE), "D", group.amount - covered)
    )
    return ledger_execute([_entry(group, tuple(debit), accounts, batch)], actor=ACTOR)[0]


def _check(entry: EntryRequest, result: LedgerResult) -> int:
    if result.status == "posted":
        return 1
    if result.status == "replayed":
        return 0
    if result.code == "id_reused":
        # Rated before with other legs (credit ran out on the first run): the usage
        # is in the ledger once already, which is what matters.
        logger.warning("usage %s was rated before with other legs", entry.transfer_id)
        return 0
    raise RatingError(f"{entry.transfer_id}: {result.code}: {result.message}")


def _tell_exhausted(buyers: set[int], accounts: _Accounts, terms: dict) -> None:
    credit_ids = {accounts.get(buyer, Account.Kind.CREDIT): buyer for buyer in sorted(buyers)}
    # Only the accounts at their floor come back (usually none).
    balances = (
        Balance.objects.filter(
            account_id__in=credit_ids, account__overdraft_limit_micros__isnull=False
        )
        .annotate(available=F("credits_posted") - F("debits_posted") - F("debits_pending"))
        .filter(available__lte=-F("account__overdraft_limit_micros"))
        .select_related("account")
    )
    for balance in balances:
        account = balance.account
        available = balance.available
        buyer = credit_ids[account.pk]
        key = f"credit-exhausted:{account.pk}:{balance.credits_posted}"
        if Event.objects.filter(tenant_id=buyer, idempotency_key=key).exists():
            continue  # this exhaustion was told already; a top-up starts a new one
        told = CreditExhausted(
            organization=buyer,
            account=account.pk,
            currency=account.currency,
            credits_posted_micros=balance.credits_posted,
            available_micros=available,
            action=terms[buyer].on_credit_exhausted,
        )
        stream_id = f"credit:{account.pk}"
        event_append(
            stream_type=CREDIT_STREAM,
            stream_id=stream_id,
            expected_version=None,
            events=[NewEvent(CREDIT_EXHAUSTED, told.payload(), told.schema_version)],
            tenant_id=buyer,
            metadata={"actor": ACTOR},
            idempotency_key=key,
        )


class UsageRating(Follower):
    name = "billing.rating"
    stream_types = (metering_events.USAGE_STREAM,)
    # One usage event carries up to a thousand rows: a follower that has fallen
    # behind catches up 25 batches to a transaction; one that keeps up takes each
    # batch as it commits.
    batch_size = 25

    def handle(self, event: RecordedEvent) -> None:
        self.handle_batch([event])

    def handle_batch(self, events: Sequence[RecordedEvent]) -> None:
        rate_batches([e for e in events if e.type == metering_events.USAGE_RECORDED])


usage_rating = register(UsageRating())
