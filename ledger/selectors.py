"""Reads of the ledger: accounts with their balances, a buyer's credit overview and a
provider's earnings, the journal's lines, the trial balance; and the projection
(``BalanceState``, ``apply_event``) the apps above read balances with.

Who may see what is decided here, from the caller, so no view can forget it: a
tenant sees its own accounts and the postings on them; finance staff of the operator
(``Caller.is_platform_finance``) see every account, the platform's included, and the
whole journal. Another tenant's account is answered as absent (404), never as
forbidden, so ids do not leak what exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta

from django.db.models import Case, CharField, Count, F, Max, Q, QuerySet, Sum, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.errors import NotFound
from core.models import Event, Organization
from core.tenancy import Caller
from ledger import events as ev
from ledger.models import Account, Balance, Hold, Posting

# The app's public surface for the apps above it:
from ledger.projection import BalanceState as BalanceState
from ledger.projection import accounts_in as accounts_in
from ledger.projection import apply_event as apply_event


def available_credit(*, organization_id: int, currency: str) -> int:
    """Posted minus pending on the buyer's prepaid credit, plus its credit limit."""
    account = Account.objects.filter(
        organization_id=organization_id, kind=Account.Kind.CREDIT, currency=currency
    ).first()
    if account is None:
        return 0
    balance = Balance.objects.get(account=account)
    return balance.credit_side_available + (account.overdraft_limit_micros or 0)


def available_credit_posted(account_id: int) -> int:
    return Balance.objects.get(account_id=account_id).credit_side_available


# --- accounts ---------------------------------------------------------------

# The same arithmetic as ledger.projection.BalanceState.posted / .available, in SQL so
# that a page of accounts is one query. tests/invoicing/test_apis.py holds the two
# side by side.
_POSTED = Case(
    When(
        normal_side=Account.Side.CREDIT,
        then=F("balance__credits_posted") - F("balance__debits_posted"),
    ),
    default=F("balance__debits_posted") - F("balance__credits_posted"),
)
# What pending holds have reserved against the account (the side that lowers it).
_PENDING = Case(
    When(normal_side=Account.Side.CREDIT, then=F("balance__debits_pending")),
    default=F("balance__credits_pending"),
)


def _with_balances(queryset: QuerySet[Account]) -> QuerySet[Account]:
    """Accounts annotated with ``posted_micros``, ``pending_micros`` and
    ``available_micros`` (posted minus pending), owner loaded alongside."""
    return (
        queryset.select_related("organization", "balance")
        .annotate(posted_micros=_POSTED, pending_micros=_PENDING)
        .annotate(available_micros=F("posted_micros") - F("pending_micros"))
    )


def _visible_accounts(caller: Caller) -> QuerySet[Account]:
    if caller.is_platform_finance:
        return Account.objects.all()
    return Account.objects.filter(organization=caller.organization)


def accounts_for_caller(*, caller: Caller) -> QuerySet[Account]:
    """The caller organization's accounts with balances; for platform finance, the
    platform's own accounts (revenue, promo, …) as well."""
    scope = Q(organization=caller.organization)
    if caller.is_platform_finance:
        scope |= Q(organization__isnull=True)
    return _with_balances(Account.objects.filter(scope))


def accounts_visible(
    *, caller: Caller, kind: str | None = None, currency: str | None = None
) -> QuerySet[Account]:
    """Every account the caller may see, with balances (for operator finance, every
    organization's and the platform's), optionally of one kind and currency; ordered
    by currency, owner and kind."""
    accounts = _visible_accounts(caller)
    if kind is not None:
        accounts = accounts.filter(kind=kind)
    if currency is not None:
        accounts = accounts.filter(currency=currency)
    return _with_balances(accounts).order_by("currency", "organization__name", "kind", "pk")


def account_get(*, caller: Caller, account_id: int) -> Account:
    """One account the caller may see, with balances; anything else is a 404."""
    account = _with_balances(_visible_accounts(caller)).filter(pk=account_id).first()
    if account is None:
        raise NotFound(
            f"no account {account_id} in your organization", details={"account": account_id}
        )
    return account


def account_for_org(*, organization: Organization, kind: str, currency: str) -> Account | None:
    """An organization's account of one kind and currency, with balances, if opened."""
    return (
        _with_balances(Account.objects.filter(organization=organization))
        .filter(kind=kind, currency=currency)
        .first()
    )


def account_currencies(*, account_ids: Sequence[int]) -> dict[int, str]:
    """``{account id: currency}`` for those of ``account_ids`` that exist."""
    return dict(Account.objects.filter(pk__in=account_ids).values_list("pk", "currency"))


# --- overviews for people (the portal's dashboards) ------------------------

# A buyer is warned when their credit lasts less than this at the current burn rate.
RUNWAY_WARNING = timedelta(days=3)
BURN_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class CreditOverview:
    """A buyer's prepaid credit as the console shows it.

    ``burn_micros``: what was debited from the credit account in the last 24 hours
    (usage, settled holds; also the rare expiry of welcome credit or a refund, which
    the journal posts the same way). ``runway`` is how long ``available`` lasts at
    that rate; None when nothing was spent (no rate to project)."""

    currency: str
    available_micros: int
    pending_micros: int
    pending_holds: int
    month_spend_micros: int
    burn_micros: int
    as_of: datetime
    has_account: bool
    alerts: tuple[str, ...] = ()

    @property
    def runway(self) -> timedelta | None:
        if self.burn_micros <= 0:
            return None
        seconds = max(0, self.available_micros) * BURN_WINDOW.total_seconds() // self.burn_micros
        return timedelta(seconds=seconds)


def credit_overview(
    *, organization: Organization, currency: str, now: datetime | None = None
) -> CreditOverview:
    """Available and held credit, this month's spend and the last day's burn: three
    queries whatever the journal holds (the postings' (account, time) index)."""
    now = now or timezone.now()
    month_start = datetime.combine(now.date().replace(day=1), time.min, tzinfo=UTC)
    account = account_for_org(
        organization=organization, kind=Account.Kind.CREDIT, currency=currency
    )
    if account is None:
        return CreditOverview(currency, 0, 0, 0, 0, 0, now, has_account=False)
    burn_since = now - BURN_WINDOW
    spent = Posting.objects.filter(
        account=account, side=Account.Side.DEBIT, recorded_at__gte=min(month_start, burn_since)
    ).aggregate(
        month=Coalesce(Sum("amount_micros", filter=Q(recorded_at__gte=month_start)), 0),
        burn=Coalesce(Sum("amount_micros", filter=Q(recorded_at__gte=burn_since)), 0),
    )
    holds = Hold.objects.filter(debit_account=account, state=Hold.State.PENDING).count()
    overview = CreditOverview(
        currency=currency,
        # annotated by _with_balances
        available_micros=account.available_micros,  # type: ignore[attr-defined]
        pending_micros=account.pending_micros,  # type: ignore[attr-defined]
        pending_holds=holds,
        month_spend_micros=spent["month"],
        burn_micros=spent["burn"],
        as_of=now,
        has_account=True,
    )
    alerts: list[str] = []
    if overview.available_micros <= 0:
        alerts.append("Your credit is used up: new work cannot start until you top up.")
    elif overview.runway is not None and overview.runway < RUNWAY_WARNING:
        alerts.append(
            "Low credit: at the last 24 hours' rate it runs out within "
            f"{RUNWAY_WARNING.days} days. Top up to keep work running."
        )
    return replace(overview, alerts=tuple(alerts))


@dataclass(frozen=True)
class EarningsOverview:
    """A provider's earnings from its payable account. What a lease earns is posted
    there at the lease price, the platform's fee already taken out (billing.rating
    credits the fee to the platform's ``fees`` account), so both numbers are net."""

    currency: str
    month_micros: int  # credited to payable since the month began
    unpaid_micros: int  # the payable balance: earned, not yet paid out
    as_of: datetime


def earnings_overview(
    *, organization: Organization, currency: str, now: datetime | None = None
) -> EarningsOverview:
    now = now or timezone.now()
    month_start = datetime.combine(now.date().replace(day=1), time.min, tzinfo=UTC)
    account = account_for_org(
        organization=organization, kind=Account.Kind.PAYABLE, currency=currency
    )
    if account is None:
        return EarningsOverview(currency, 0, 0, now)
    month = Posting.objects.filter(
        account=account, side=Account.Side.CREDIT, recorded_at__gte=month_start
    ).aggregate(total=Coalesce(Sum("amount_micros"), 0))["total"]
    unpaid = account.posted_micros  # type: ignore[attr-defined]
    return EarningsOverview(currency, month, unpaid, now)


# --- prepaid credit: what the platform owes in service ------------------------

LIABILITY_TOP_HOLDERS = 10


@dataclass(frozen=True, slots=True)
class CreditLiability:
    """The buyers' unused prepaid credit in one currency: a liability of the platform
    until the service is used. ``total_micros`` adds the posted balances that are
    positive (a buyer past its overdraft owes, it is not owed); ``pending_micros`` is
    what open holds have reserved out of them; ``top`` the largest holders, each an
    account annotated as ``accounts_visible`` annotates it."""

    currency: str
    total_micros: int
    pending_micros: int
    holders: int
    top: list[Account]


def credit_liability(*, top: int = LIABILITY_TOP_HOLDERS) -> list[CreditLiability]:
    """Prepaid credit held by buyers, per currency, with the ``top`` largest holders.
    One query for the totals and one per currency for the holders (currencies are a
    handful), whatever the number of buyers."""
    credit = _with_balances(
        Account.objects.filter(kind=Account.Kind.CREDIT, organization__isnull=False)
    )
    positive = credit.filter(Q(posted_micros__gt=0))  # an annotation: Q, for the type checker
    totals = (
        positive.order_by()
        .values("currency")
        .annotate(total=Sum("posted_micros"), pending=Sum("pending_micros"), n=Count("pk"))
        .values_list("currency", "total", "pending", "n")
    )
    out = []
    for currency, total, pending, holders in sorted(totals):
        largest = list(
            positive.filter(currency=currency).order_by(
                F("posted_micros").desc(), "organization__name"
            )[:top]
        )
        out.append(CreditLiability(currency, int(total), int(pending or 0), holders, largest))
    return out


# --- the journal ------------------------------------------------------------


def journal_lines(
    *,
    caller: Caller,
    account_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[Posting]:
    """The journal's lines the caller may see, in the half-open period
    ``[since, until)`` of their ``recorded_at``, optionally for one account.

    Each posting comes annotated with its entry's ``transfer_id``, ``kind`` and
    ``description`` from the event payload (one join, no per-row query). Lines
    posted by a hold carry the hold's id and the kind ``hold``.
    """
    if account_id is not None:
        account_get(caller=caller, account_id=account_id)  # a 404 unless visible
        postings = Posting.objects.filter(account_id=account_id)
    elif caller.is_platform_finance:
        postings = Posting.objects.all()
    else:
        postings = Posting.objects.filter(account__organization=caller.organization)
    if since is not None:
        postings = postings.filter(recorded_at__gte=since)
    if until is not None:
        postings = postings.filter(recorded_at__lt=until)
    return postings.annotate(
        transfer_id=Coalesce(_entry_key("transfer_id"), _entry_key("hold_id")),
        kind=Coalesce(_entry_key("kind"), Value("hold"), output_field=CharField()),
        description=Coalesce(_entry_key("description"), Value(""), output_field=CharField()),
    )


def _entry_key(key: str) -> KeyTextTransform:
    # KT("entry__payload__key") would read "payload" as a JSON key of the foreign
    # key's own column; spelling the path to the JSON field out makes it a join.
    return KeyTextTransform(key, "entry__payload")


@dataclass(frozen=True, slots=True)
class JournalLeg:
    account_id: int
    side: str  # "D" | "C"
    amount_micros: int
    currency: str


@dataclass(frozen=True, slots=True)
class JournalEntry:
    position: int
    transfer_id: str
    kind: str
    currency: str
    description: str
    recorded_at: datetime
    legs: list[JournalLeg] = field(default_factory=list)


def journal_entry_get(*, position: int) -> JournalEntry:
    """One journal entry (an ``EntryPosted`` event) with its legs, from the event."""
    event = Event.objects.filter(
        position=position, stream_type=ev.ENTRY_STREAM, type=ev.ENTRY_POSTED
    ).first()
    if event is None:
        raise NotFound(f"no journal entry at position {position}")
    payload = event.payload
    currency = payload["currency"]
    return JournalEntry(
        position=event.position,
        transfer_id=payload["transfer_id"],
        kind=payload["kind"],
        currency=currency,
        description=payload.get("description", ""),
        recorded_at=event.recorded_at,
        legs=[
            JournalLeg(account_id=account_id, side=side, amount_micros=amount, currency=currency)
            for account_id, side, amount in payload["legs"]
        ],
    )


# --- the trial balance ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrialBalanceRow:
    account_id: int
    organization_id: int | None
    owner: str  # the organization's name, or "platform"
    kind: str
    currency: str
    normal_side: str
    debits_micros: int
    credits_micros: int
    balance_micros: int  # on the account's normal side


@dataclass(frozen=True, slots=True)
class TrialBalanceTotal:
    currency: str
    debits_micros: int
    credits_micros: int

    @property
    def balanced(self) -> bool:
        return self.debits_micros == self.credits_micros


@dataclass(frozen=True, slots=True)
class TrialBalance:
    position: int  # the newest ledger event reflected
    rows: list[TrialBalanceRow]
    totals: list[TrialBalanceTotal]


def trial_balance(*, currency: str | None = None) -> TrialBalance:
    """Posted debits and credits of every account (pending holds are not in the
    books yet), with totals per currency, which must agree.

    Read from the balance projection, one row per account in one query. The totals
    are summed from those same rows rather than by a second query: under READ
    COMMITTED a second statement could see entries the first did not, and the
    report would then disagree with itself.
    """
    balances = Balance.objects.select_related("account__organization").order_by(
        "account__currency", "account__organization__name", "account__kind", "account_id"
    )
    if currency is not None:
        balances = balances.filter(account__currency=currency)
    rows: list[TrialBalanceRow] = []
    sums: dict[str, list[int]] = {}
    position = 0
    for balance in balances:
        account = balance.account
        debits, credits = balance.debits_posted, balance.credits_posted
        rows.append(
            TrialBalanceRow(
                account_id=account.pk,
                organization_id=account.organization_id,
                owner=account.organization.name if account.organization else "platform",
                kind=account.kind,
                currency=account.currency,
                normal_side=account.normal_side,
                debits_micros=debits,
                credits_micros=credits,
                balance_micros=(
                    credits - debits
                    if account.normal_side == Account.Side.CREDIT
                    else debits - credits
                ),
            )
        )
        total = sums.setdefault(account.currency, [0, 0])
        total[0] += debits
        total[1] += credits
        position = max(position, balance.position)
    totals = [
        TrialBalanceTotal(currency=code, debits_micros=d, credits_micros=c)
        for code, (d, c) in sorted(sums.items())
    ]
    return TrialBalance(position=position, rows=rows, totals=totals)


@dataclass(frozen=True, slots=True)
class TrialBalanceGroup:
    """The accounts of one kind in one currency, summed: the platform's own account
    of that kind, or every organization's (credit, receivable, payable)."""

    currency: str
    kind: str
    platform: bool
    accounts: int
    normal_side: str
    debits_micros: int
    credits_micros: int

    @property
    def balance_micros(self) -> int:
        """On the kind's normal side."""
        if self.normal_side == Account.Side.CREDIT:
            return self.credits_micros - self.debits_micros
        return self.debits_micros - self.credits_micros


@dataclass(frozen=True, slots=True)
class TrialBalanceSummary:
    position: int  # the newest ledger event reflected
    groups: list[TrialBalanceGroup]
    totals: list[TrialBalanceTotal]


def trial_balance_by_kind(*, currency: str | None = None) -> TrialBalanceSummary:
    """The trial balance with the organizations' accounts summed by kind (as a
    general ledger carries a subledger's control account): one row per currency,
    kind and owner (platform or organizations), whatever the number of buyers.
    One aggregate query, so its rows and totals come from one snapshot; the
    accounts page lists the accounts behind each row."""
    balances = Balance.objects.all()
    if currency is not None:
        balances = balances.filter(account__currency=currency)
    rows = (
        balances.values(
            "account__currency",
            "account__kind",
            "account__normal_side",
            platform=Q(account__organization__isnull=True),
        )
        .annotate(
            accounts=Count("account_id"),
            debits=Coalesce(Sum("debits_posted"), 0),
            credits=Coalesce(Sum("credits_posted"), 0),
            newest=Coalesce(Max("position"), 0),
        )
        .order_by("account__currency", "-platform", "account__kind")
    )
    groups: list[TrialBalanceGroup] = []
    sums: dict[str, list[int]] = {}
    position = 0
    for row in rows:
        groups.append(
            TrialBalanceGroup(
                currency=row["account__currency"],
                kind=row["account__kind"],
                platform=row["platform"],
                accounts=row["accounts"],
                normal_side=row["account__normal_side"],
                debits_micros=row["debits"],
                credits_micros=row["credits"],
            )
        )
        total = sums.setdefault(row["account__currency"], [0, 0])
        total[0] += row["debits"]
        total[1] += row["credits"]
        position = max(position, row["newest"])
    totals = [
        TrialBalanceTotal(currency=code, debits_micros=d, credits_micros=c)
        for code, (d, c) in sorted(sums.items())
    ]
    return TrialBalanceSummary(position=position, groups=groups, totals=totals)


# --- the price book -----------------------------------------------------------

# What each price book item's integer value counts.
