"""Rating: usage into journal entries, exactly once, in order.

The follower ``billing.rating`` follows metering's ``UsageRecorded`` events (one per
ingested batch, in commit order: see metering.services for why events and not the
usage table). For each, in the follower's transaction (so the tracking position and
the journal entries commit together, or neither does):

1. the batch's usage rows are loaded and each is rated alone by ``rate_usage``: the
   price table gives an integer rate (``billing.pricing.rate_for``) and the amount is
   ``quantity * rate / unit`` rounded half-even to a micro-unit, once;
2. the amounts are summed per buyer (tokens: into platform revenue) and per buyer and
   provider (GPU-seconds of a lease: the provider's payable, plus the platform fee);
3. one journal entry per group is posted through ``ledger_execute``, with the transfer
   id ``usage:<first usage row id of the group>``: a replay after a crash, or after the
   tracking row was rewound, is answered ``replayed`` by the ledger and posts nothing;
4. the buyer side is the prepaid credit account, or the receivable for postpaid orgs
   (``billing.pricing.billing_terms_for``). When prepaid credit cannot cover an
   entry, what it can cover comes from credit and the rest goes to the receivable,
   owed and invoiced — usage that happened is never dropped, and the credit account
   never passes its limit (no silent overdraft);
5. when a prepaid buyer's available credit has reached its floor, a
   ``CreditExhausted`` event is appended (stream ``credit:<account id>``, once per
   exhaustion: keyed by the account's credits posted so far, so a top-up starts a new
   episode). The marketplace and the runtime follow it and pause or stop the buyer's
   running work, as the buyer's terms say.

Run it as ``manage.py run_follower billing.rating --batch-size 1``: each batch's
journal entries take the event store's append lock, held to commit, and with one
usage batch per transaction that is from the ledger write to the commit and no
longer (a larger batch would hold it while rating the next batches, and ingestion,
which appends UsageRecorded, would wait). A usage batch is up to 1,000 events, so
one per transaction is still one commit per thousand events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from billing.credit import leases_settled_by_hold
from billing.events import CREDIT_EXHAUSTED, CREDIT_STREAM, CreditExhausted
from billing.models import Account, Balance
from billing.pricing import BPS, Rate, billing_terms_for, rate_for
from billing.services import EntryRequest, LedgerResult, account_open, ledger_execute
from core.eventstore import NewEvent, RecordedEvent, event_append, stream_version
from core.followers import Follower, register
from core.models import Event, Organization
from core.money import rate_amount
from metering import events as metering_events
from metering.models import UsageEvent
from metering.selectors import UsageForRating, usage_for_rating

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
    rate = price(usage_type, dimensions, at)
    amount = rate_amount(quantity, rate.rate_micros, rate.unit)
    if rate.payee == "provider":
        fee = rate_amount(amount, rate.fee_bps, BPS)
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
        key = (line.buyer_id, rated.provider_id)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(line.id, line.buyer_id, rated.provider_id)
        group.events += 1
        group.amount += rated.amount_micros
        group.revenue += rated.revenue_micros
        group.provider += rated.provider_micros
        group.fee += rated.fee_micros
    return sorted(groups.values(), key=lambda g: g.first_usage_id)


def usage_transfer_id(first_usage_id: int) -> str:
    return f"usage:{first_usage_id}"


class _Accounts:
    """Account ids for one batch, opened on first use."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self._ids: dict[tuple[int | None, str], int] = {}

    def load(self, org_ids: set[int]) -> None:
        for org_id, kind, pk in Account.objects.filter(
            organization_id__in=org_ids, currency=self.currency
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


def rate_batch(event: RecordedEvent) -> int:
    """Rate one UsageRecorded batch into the ledger; return the entries posted."""
    lines = usage_for_rating(ranges=event.payload["usage_ranges"])
    if len(lines) != event.payload["count"]:
        raise RatingError(
            f"{event.stream_id} names {event.payload['count']} usage rows; {len(lines)} were found"
        )
    lines = _without_lease_settled(lines)
    groups = [g for g in groups_for(lines) if g.amount > 0]
    if not groups:
        return 0
    accounts = _Accounts(settings.TANDEM_CURRENCY)
    buyers = {g.buyer_id for g in groups}
    accounts.load(buyers | {g.provider_id for g in groups if g.provider_id is not None})
    terms = billing_terms_for(organization_ids=buyers)
    entries = []
    for group in groups:
        kind = Account.Kind.RECEIVABLE if terms[group.buyer_id].postpaid else Account.Kind.CREDIT
        debit = ((accounts.get(group.buyer_id, kind), "D", group.amount),)
        entries.append(_entry(group, debit, accounts, event.stream_id))
    results = ledger_execute(entries, actor=ACTOR)
    posted = 0
    for group, entry, result in zip(groups, entries, results, strict=True):
        if result.code == "exceeds_limit":
            result = _post_split(group, accounts, event.stream_id)
        posted += _check(entry, result)
    prepaid = {g.buyer_id for g in groups if not terms[g.buyer_id].postpaid}
    if prepaid:
        _tell_exhausted(prepaid, accounts, terms)
    return posted


def _without_lease_settled(lines: list[UsageForRating]) -> list[UsageForRating]:
    """GPU-seconds of a marketplace lease are billed when the lease's hold is settled
    (billing.credit): rating them too would bill them twice. A lease is known by its
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
    balances = Balance.objects.filter(account_id__in=credit_ids).select_related("account")
    for balance in balances:
        account = balance.account
        available = balance.credits_posted - balance.debits_posted - balance.debits_pending
        floor = -(account.overdraft_limit_micros or 0)
        if account.overdraft_limit_micros is None or available > floor:
            continue
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
            expected_version=stream_version(stream_id),
            events=[NewEvent(CREDIT_EXHAUSTED, told.payload(), told.schema_version)],
            tenant_id=buyer,
            metadata={"actor": ACTOR},
            idempotency_key=key,
        )


class UsageRating(Follower):
    name = "billing.rating"
    stream_types = (metering_events.USAGE_STREAM,)
    batch_size = 1  # one usage event carries up to a thousand rows

    def handle(self, event: RecordedEvent) -> None:
        if event.type == metering_events.USAGE_RECORDED:
            rate_batch(event)


usage_rating = register(UsageRating())
