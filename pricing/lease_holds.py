"""The buyer's credit as the marketplace uses it (``LEASE_CREDIT``): available
credit, an order's reservation, and the two-phase holds behind GPU leases, priced
with the lease price and the platform fee, on top of the ledger (ledger.services).
A GPU lease's holds are named ``<usage subject>:w<window>`` (``lease_hold_id``):
rating skips ``gpu.seconds`` usage of a lease that has one, because settling the
hold is that lease's bill (``leases_settled_by_hold``).

Accounts:

- an order's reservation: the buyer's prepaid ``credit`` → platform ``revenue``
  (pending only: a reservation is always released, never posted);
- a raw GPU lease's hold: the buyer's ``credit`` → the provider's ``payable``.
  Settling it posts the GPU time delivered in one journal entry: the buyer's credit
  debited with provider share + platform fee, the provider's payable and the
  platform's ``fees`` credited; the rest of the hold is released;
- a managed lease's hold (a fine-tune or an inference deployment, billed to the
  buyer per token): the platform's ``cost_of_revenue`` → the provider's payable,
  settled with the provider's share only.

Every call runs ``ledger_execute`` and so joins the caller's transaction: a hold
and the lease row it backs commit together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from core.errors import InsufficientFunds
from core.money import Money, rate_amount
from ledger.models import Account, Hold
from ledger.selectors import available_credit
from ledger.services import (
    HoldPostRequest,
    HoldRequest,
    HoldVoidRequest,
    LedgerResult,
    account_open_by_id,
    ledger_execute,
    platform_account,
    raise_for,
)
from pricing.book import BPS, rate_for

ACTOR = "marketplace"
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True, slots=True)
class GpuTimeCost:
    """What ``gpu_seconds`` at a price per GPU-hour cost: the provider's share is
    ``gpu_seconds * price / 3600`` rounded half-even once; the buyer pays it plus the
    platform fee (managed work: the platform pays the provider, no fee)."""

    gpu_seconds: int
    provider_micros: int
    fee_micros: int

    @property
    def buyer_micros(self) -> int:
        return self.provider_micros + self.fee_micros


def lease_hold_id(subject_id: str, window: int) -> str:
    """The hold behind billing window ``window`` (1, 2, …) of the lease whose usage
    subject is ``subject_id``. Rating looks for window 1 (billing.rating)."""
    return f"{subject_id}:w{window}"


def leases_settled_by_hold(subject_ids: set[str]) -> set[str]:
    """Which of these lease usage subjects are billed by settling their holds."""
    if not subject_ids:
        return set()
    wanted = {lease_hold_id(subject, 1): subject for subject in subject_ids}
    found = Hold.objects.filter(hold_id__in=list(wanted)).values_list("hold_id", flat=True)
    return {wanted[hold_id] for hold_id in found}


def _insufficient(result: LedgerResult, amount_micros: int, currency: str) -> InsufficientFunds:
    missing = int(result.details.get("missing_micros", amount_micros))
    available = int(result.details.get("available_micros", 0))
    return InsufficientFunds(
        f"available credit {Money(max(available, 0), currency).format()} {currency} does not "
        f"cover {Money(amount_micros, currency).format()} {currency}: "
        f"{Money(missing, currency).format()} {currency} missing",
        details={
            "required_micros": amount_micros,
            "available_micros": available,
            "missing_micros": missing,
            "missing": Money(missing, currency).format(),
            "currency": currency,
        },
    )


def _place(request: HoldRequest) -> None:
    result = ledger_execute([request], actor=ACTOR)[0]
    if result.code == "exceeds_limit":
        raise _insufficient(result, request.amount_micros, request.currency)
    raise_for(result)


class LeaseCredit:
    """The marketplace's one instance is ``LEASE_CREDIT`` (pricing.services)."""

    def available(self, *, organization_id: int, currency: str) -> int:
        return available_credit(organization_id=organization_id, currency=currency)

    def gpu_time_cost(
        self, *, gpu_seconds: int, price_micros_per_gpu_hour: int, currency: str, managed: bool
    ) -> GpuTimeCost:
        provider = rate_amount(gpu_seconds, price_micros_per_gpu_hour, SECONDS_PER_HOUR)
        if managed:
            return GpuTimeCost(gpu_seconds=gpu_seconds, provider_micros=provider, fee_micros=0)
        # The fee comes from the price book's rate for GPU time, as rating uses it.
        rate = rate_for(
            "gpu.seconds",
            {"lease_price_micros_per_hour": price_micros_per_gpu_hour},
            timezone.now(),
        )
        fee = rate_amount(provider, rate.fee_bps, BPS)
        return GpuTimeCost(gpu_seconds=gpu_seconds, provider_micros=provider, fee_micros=fee)

    def reserve(
        self,
        *,
        hold_id: str,
        organization_id: int,
        amount_micros: int,
        currency: str,
        expires_at: datetime,
        description: str,
    ) -> None:
        credit = account_open_by_id(
            organization_id=organization_id, kind=Account.Kind.CREDIT, currency=currency
        )
        revenue = platform_account(kind=Account.Kind.REVENUE, currency=currency)
        _place(
            HoldRequest(
                hold_id=hold_id,
                debit_account_id=credit.pk,
                credit_account_id=revenue.pk,
                amount_micros=amount_micros,
                currency=currency,
                expires_at=expires_at,
                description=description[:500],
            )
        )

    def release(self, *, hold_id: str) -> bool:
        result = ledger_execute([HoldVoidRequest(hold_id)], actor=ACTOR)[0]
        if result.code == "hold_resolved":
            return False  # expired (or settled) already: nothing left to release
        raise_for(result)
        return result.status == "posted"

    def lease_hold_place(
        self,
        *,
        hold_id: str,
        buyer_organization_id: int | None,
        provider_organization_id: int,
        amount_micros: int,
        currency: str,
        expires_at: datetime,
        description: str,
    ) -> None:
        if buyer_organization_id is None:
            debit = platform_account(kind=Account.Kind.COST_OF_REVENUE, currency=currency)
        else:
            debit = account_open_by_id(
                organization_id=buyer_organization_id,
                kind=Account.Kind.CREDIT,
                currency=currency,
            )
        payable = account_open_by_id(
            organization_id=provider_organization_id,
            kind=Account.Kind.PAYABLE,
            currency=currency,
        )
        _place(
            HoldRequest(
                hold_id=hold_id,
                debit_account_id=debit.pk,
                credit_account_id=payable.pk,
                amount_micros=amount_micros,
                currency=currency,
                expires_at=expires_at,
                description=description[:500],
            )
        )

    def lease_hold_settle(
        self, *, hold_id: str, provider_organization_id: int, cost: GpuTimeCost
    ) -> None:
        hold = Hold.objects.get(hold_id=hold_id)
        if cost.buyer_micros == 0:
            # Nothing delivered: a journal entry has no zero legs, so the hold is voided.
            result = ledger_execute([HoldVoidRequest(hold_id)], actor=ACTOR)[0]
            if result.code == "hold_resolved" and hold.state == Hold.State.VOIDED:
                return
            raise_for(result)
            return
        payable = account_open_by_id(
            organization_id=provider_organization_id,
            kind=Account.Kind.PAYABLE,
            currency=hold.currency,
        )
        legs = [(payable.pk, cost.provider_micros)]
        if cost.fee_micros:
            fees = platform_account(kind=Account.Kind.FEES, currency=hold.currency)
            legs.append((fees.pk, cost.fee_micros))
        request = HoldPostRequest(hold_id, cost.buyer_micros, tuple(legs))
        raise_for(ledger_execute([request], actor=ACTOR)[0])


LEASE_CREDIT = LeaseCredit()
