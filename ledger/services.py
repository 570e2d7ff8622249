"""The ledger's public writes: accounts, transfers, two-phase holds, credit grants,
adjustments and the balances' rebuild. Every write goes through one engine,
``ledger_execute`` (ledger/engine.py), re-exported here with its request and result
types for the apps above."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.db import retry_transaction
from core.errors import (
    InvalidInput,
)
from core.eventstore import (
    NewEvent,
    event_append,
)
from core.models import Organization
from core.money import CURRENCIES, MAX_AMOUNT_MICROS
from ledger import events as ev
from ledger.engine import (
    MAX_LEGS,
    TRANSFER_ID,
    EntryRequest,
    HoldPostRequest,
    HoldRequest,
    HoldVoidRequest,
    LedgerResult,
    ledger_execute,
    raise_for,
)
from ledger.models import Account, Balance, Hold
from ledger.projection import replay

# --- accounts ---------------------------------------------------------------


def _default_limit(kind: str) -> int | None:
    # Buyers' prepaid credit and providers' payable may not go below zero;
    # platform accounts carry whatever the books say.
    return 0 if kind in (Account.Kind.CREDIT, Account.Kind.PAYABLE) else None


def account_open(*, organization: Organization | None, kind: str, currency: str) -> Account:
    """The account of this kind and currency for an org (or the platform), opened
    with a zero balance the first time it is asked for."""
    return account_open_by_id(
        organization_id=None if organization is None else organization.pk,
        kind=kind,
        currency=currency,
    )


def account_open_by_id(*, organization_id: int | None, kind: str, currency: str) -> Account:
    """``account_open`` for a caller that holds the organization's id, not its row."""
    if kind not in Account.Kind.values:
        raise InvalidInput(f"unknown account kind {kind!r}", details={"field": "kind"})
    if currency not in CURRENCIES:
        raise InvalidInput(f"unknown currency {currency!r}", details={"field": "currency"})
    if (organization_id is None) == (kind in Account.ORG_KINDS):
        owner = "an organization" if kind in Account.ORG_KINDS else "the platform"
        raise InvalidInput(f"a {kind} account belongs to {owner}")
    same = Account.objects.filter(kind=kind, currency=currency)
    same = (
        same.filter(organization__isnull=True)
        if organization_id is None
        else same.filter(organization_id=organization_id)
    )
    found = same.first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            account = Account.objects.create(
                organization_id=organization_id,
                kind=kind,
                currency=currency,
                normal_side=Account.NORMAL_SIDE[Account.Kind(kind)],
                overdraft_limit_micros=_default_limit(kind),
            )
            Balance.objects.create(account=account)
            return account
    except IntegrityError:
        return same.get()


def platform_account(*, kind: str, currency: str) -> Account:
    return account_open(organization=None, kind=kind, currency=currency)


ACCOUNT_STREAM = "ledger.account"
CREDIT_LIMIT_SET = "CreditLimitSet"


@retry_transaction
def account_set_overdraft_limit(
    *, account: Account, limit_micros: int | None, reason: str = "", actor: str = "system"
) -> Account:
    """Finance sets how far a buyer's prepaid credit may go below zero (its credit
    limit; None: no limit). The change is an event on the account's stream."""
    if account.kind != Account.Kind.CREDIT or account.organization_id is None:
        raise InvalidInput(
            f"account {account.pk} is a {account.kind} account; credit limits apply "
            "to a buyer's credit account",
            details={"account": account.pk},
        )
    if limit_micros is not None and (
        isinstance(limit_micros, bool)
        or not isinstance(limit_micros, int)
        or not 0 <= limit_micros <= MAX_AMOUNT_MICROS
    ):
        raise InvalidInput(
            f"limit must be an integer from 0 to {MAX_AMOUNT_MICROS} micro-units",
            details={"field": "limit_micros"},
        )
    # Lock the balance row: a limit changes under no concurrent ledger write.
    Balance.objects.select_for_update().filter(account=account).first()
    stream_id = f"account:{account.pk}"
    event_append(
        stream_type=ACCOUNT_STREAM,
        stream_id=stream_id,
        expected_version=None,
        events=[
            NewEvent(
                CREDIT_LIMIT_SET,
                {
                    "account": account.pk,
                    "previous_micros": account.overdraft_limit_micros,
                    "limit_micros": limit_micros,
                    "reason": reason.strip()[:500],
                },
            )
        ],
        tenant_id=account.organization_id,
        metadata={"actor": actor},
    )
    Account.objects.filter(pk=account.pk).update(overdraft_limit_micros=limit_micros)
    account.refresh_from_db()
    return account


# --- single-command conveniences --------------------------------------------


def entry_post(*, entry: EntryRequest, actor: str = "system") -> LedgerResult:
    return raise_for(ledger_execute([entry], actor=actor)[0])


def transfer_create(
    *,
    transfer_id: str,
    debit_account_id: int,
    credit_account_id: int,
    amount_micros: int,
    currency: str,
    kind: str = "transfer",
    description: str = "",
    actor: str = "system",
) -> LedgerResult:
    entry = EntryRequest(
        transfer_id=transfer_id,
        currency=currency,
        legs=((debit_account_id, "D", amount_micros), (credit_account_id, "C", amount_micros)),
        kind=kind,
        description=description,
    )
    return entry_post(entry=entry, actor=actor)


def hold_create(
    *,
    hold_id: str,
    debit_account_id: int,
    credit_account_id: int,
    amount_micros: int,
    currency: str,
    timeout: timedelta,
    description: str = "",
    actor: str = "system",
) -> LedgerResult:
    now = timezone.now()
    request = HoldRequest(
        hold_id=hold_id,
        debit_account_id=debit_account_id,
        credit_account_id=credit_account_id,
        amount_micros=amount_micros,
        currency=currency,
        expires_at=now + timeout,
        description=description,
    )
    return raise_for(ledger_execute([request], actor=actor, now=now)[0])


def hold_post(
    *,
    hold_id: str,
    amount_micros: int | None = None,
    credit_legs: tuple[tuple[int, int], ...] | None = None,
    actor: str = "system",
) -> LedgerResult:
    """Settle a hold: post ``amount_micros`` (all of it by default) and release the
    rest. ``credit_legs`` splits what is posted over several accounts in the same
    journal entry (a provider's payable and the platform fee)."""
    request = HoldPostRequest(hold_id, amount_micros, credit_legs)
    return raise_for(ledger_execute([request], actor=actor)[0])


def hold_void(*, hold_id: str, actor: str = "system") -> LedgerResult:
    return raise_for(ledger_execute([HoldVoidRequest(hold_id)], actor=actor)[0])


def holds_expire(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Release every pending hold whose time ran out; return how many were released."""
    now = now or timezone.now()
    due = list(
        Hold.objects.filter(state=Hold.State.PENDING, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("hold_id", flat=True)[:limit]
    )
    if not due:
        return 0
    results = ledger_execute(
        [HoldVoidRequest(hold_id, expired=True) for hold_id in due], actor="expiry", now=now
    )
    return sum(1 for r in results if r.status == "posted")


# --- money in and out of the books by people ---------------------------------


def credits_grant(
    *,
    organization: Organization,
    amount_micros: int,
    currency: str,
    reason: str,
    transfer_id: str | None = None,
    actor: str = "system",
) -> LedgerResult:
    """Free credits for a buyer: debit the platform's promo account, credit the buyer."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("a grant needs a reason", details={"field": "reason"})
    if not organization.is_buyer:
        raise InvalidInput(f"{organization.name} is not a buyer organization")
    promo = platform_account(kind=Account.Kind.PROMO, currency=currency)
    credit = account_open(organization=organization, kind=Account.Kind.CREDIT, currency=currency)
    return transfer_create(
        transfer_id=transfer_id or f"grant:{organization.pk}:{timezone.now().timestamp():.6f}",
        debit_account_id=promo.pk,
        credit_account_id=credit.pk,
        amount_micros=amount_micros,
        currency=currency,
        kind="grant",
        description=reason[:500],
        actor=actor,
    )


def adjustment_post(
    *,
    transfer_id: str,
    currency: str,
    legs: Sequence[ev.Leg],
    reason: str,
    actor: str,
) -> LedgerResult:
    """A manual journal entry by finance staff, with the reason on the record."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("an adjustment needs a reason", details={"field": "reason"})
    entry = EntryRequest(
        transfer_id=transfer_id,
        currency=currency,
        legs=tuple(tuple(leg) for leg in legs),  # type: ignore[misc]
        kind="adjustment",
        description=reason[:500],
    )
    return entry_post(entry=entry, actor=actor)


# --- projections ------------------------------------------------------------


@transaction.atomic
def balances_rebuild() -> int:
    """Recompute every balance from the ledger's events (position 0 onwards) and
    write the result; return how many rows differed from the live projection."""
    replayed = replay()
    changed = 0
    live = Balance.objects.select_for_update().order_by("account_id")
    for balance in live:
        state = replayed.get(balance.account_id)
        counters = state.counters() if state else (0, 0, 0, 0, 0)
        current = (
            balance.debits_posted,
            balance.credits_posted,
            balance.debits_pending,
            balance.credits_pending,
            balance.position,
        )
        if counters != current:
            changed += 1
            Balance.objects.filter(pk=balance.pk).update(
                debits_posted=counters[0],
                credits_posted=counters[1],
                debits_pending=counters[2],
                credits_pending=counters[3],
                position=counters[4],
            )
    return changed


__all__ = [
    "ACCOUNT_STREAM",
    "CREDIT_LIMIT_SET",
    "MAX_LEGS",
    "TRANSFER_ID",
    "EntryRequest",
    "HoldPostRequest",
    "HoldRequest",
    "HoldVoidRequest",
    "LedgerResult",
    "account_open",
    "account_open_by_id",
    "account_set_overdraft_limit",
    "adjustment_post",
    "balances_rebuild",
    "credits_grant",
    "entry_post",
    "hold_create",
    "hold_post",
    "hold_void",
    "holds_expire",
    "ledger_execute",
    "platform_account",
    "raise_for",
    "transfer_create",
]
