"""Reads of payments, scoped to the caller here so no view can forget it.

A buyer sees its own top-ups, refunds and its invoices' collection attempts; a
provider its own connected account and payouts (with the payable's journal lines
each covers); finance staff of the operator see all of it, and the reconciliation.
Another org's id answers 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.db.models import Max, QuerySet

from core.errors import NotFound
from core.models import Organization
from core.tenancy import Caller
from invoicing.models import Invoice
from ledger.models import Account, Balance, Posting
from payments.models import (
    AutoRecharge,
    ConnectedAccount,
    InvoiceCollection,
    InvoicePayment,
    InvoiceRefund,
    Payout,
    ReconciliationDifference,
    ReconciliationRun,
    Refund,
    StripeCustomer,
    TopUp,
)

# The saved cards are read from Stripe (payments.payment_methods), re-exported here.
from payments.payment_methods import SavedCard as SavedCard
from payments.payment_methods import SavedCards as SavedCards
from payments.payment_methods import payment_methods_list as payment_methods_list


def top_ups_for_caller(*, caller: Caller) -> QuerySet[TopUp]:
    if caller.is_platform_finance:
        return TopUp.objects.all()
    return TopUp.objects.filter(organization=caller.organization)


def top_up_get(*, caller: Caller, top_up_id: int) -> TopUp:
    found = top_ups_for_caller(caller=caller).filter(pk=top_up_id).first()
    if found is None:
        raise NotFound(f"no top-up {top_up_id} in your organization", details={"top_up": top_up_id})
    return found


def refunds_for_top_up(*, top_up: TopUp) -> QuerySet[Refund]:
    return top_up.refunds.order_by("pk")


def customer_for(*, organization: Organization) -> StripeCustomer | None:
    return StripeCustomer.objects.filter(organization=organization).first()


def auto_recharge_for(*, organization: Organization) -> AutoRecharge | None:
    return AutoRecharge.objects.filter(organization=organization).first()


def connected_account_for(*, organization: Organization) -> ConnectedAccount | None:
    return ConnectedAccount.objects.filter(organization=organization).first()


def payouts_for_caller(*, caller: Caller) -> QuerySet[Payout]:
    if caller.is_platform_finance:
        return Payout.objects.all()
    return Payout.objects.filter(organization=caller.organization)


def payout_get(*, caller: Caller, payout_id: int) -> Payout:
    found = payouts_for_caller(caller=caller).filter(pk=payout_id).first()
    if found is None:
        raise NotFound(f"no payout {payout_id} in your organization", details={"payout": payout_id})
    return found


def payout_lines(*, payout: Payout) -> QuerySet[Posting]:
    """The payable's credit lines (what the provider earned) that this payout
    covers: entries after the previous payout's and up to this one's."""
    return (
        Posting.objects.filter(
            account__organization_id=payout.organization_id,
            account__kind=Account.Kind.PAYABLE,
            account__currency=payout.currency,
            side=Account.Side.CREDIT,
            entry_id__gt=payout.covers_after_position,
            entry_id__lte=payout.covers_through_position,
        )
        .select_related("entry")
        .order_by("entry_id")
    )


@dataclass(frozen=True, slots=True)
class Reconciliation:
    run: ReconciliationRun | None
    differences: list[ReconciliationDifference]


def reconciliation_differences(*, day: date, currency: str) -> Reconciliation:
    """The day's reconciliation of Stripe clearing against Stripe (for the finance
    reconciliation report): the run, and each difference it found."""
    run = ReconciliationRun.objects.filter(day=day, currency=currency).first()
    if run is None:
        return Reconciliation(None, [])
    return Reconciliation(run, list(run.differences.order_by("kind", "source_id")))


def reconciliation_latest(*, currency: str) -> Reconciliation:
    """The newest day's reconciliation of Stripe clearing against Stripe, if any ran."""
    day = ReconciliationRun.objects.filter(currency=currency).aggregate(d=Max("day"))["d"]
    if day is None:
        return Reconciliation(None, [])
    return reconciliation_differences(day=day, currency=currency)


# --- payouts due ------------------------------------------------------------------------

PAYOUTS_RECENT = 10


@dataclass(frozen=True, slots=True)
class PayoutDue:
    """A provider's payable: what it has earned and not been paid (posted, less what
    a payout in flight reserves), whether the next run pays it, and why not."""

    organization: Organization
    available_micros: int
    reserved_micros: int
    connected_account: ConnectedAccount | None
    pending: Payout | None
    minimum_micros: int

    @property
    def state(self) -> str:
        if self.pending is not None:
            return "in flight"
        if self.connected_account is None:
            return "no Stripe account"
        if not self.connected_account.payouts_enabled:
            return "onboarding"
        if self.available_micros < self.minimum_micros:
            return "below the minimum"
        return "paid next run"


@dataclass(frozen=True, slots=True)
class PayoutsDue:
    currency: str
    minimum_micros: int
    due: list[PayoutDue]  # the largest first
    recent: list[Payout]  # the newest payouts, any state
    pending: int  # payouts in flight now
    failed: int  # payouts Stripe refused (each released back to its payable)

    @property
    def total_micros(self) -> int:
        return sum(row.available_micros for row in self.due)

    @property
    def next_run_micros(self) -> int:
        return sum(row.available_micros for row in self.due if row.state == "paid next run")


def payouts_due(*, currency: str, minimum_micros: int | None = None) -> PayoutsDue:
    """Every provider's unpaid payable and where the payout run stands: four queries
    (payables, their connected accounts and payouts in flight, the recent payouts,
    counts by state), whatever the number of providers."""
    minimum = settings.PAYOUT_MINIMUM_MICROS if minimum_micros is None else minimum_micros
    balances = (
        Balance.objects.filter(
            account__kind=Account.Kind.PAYABLE,
            account__currency=currency,
            account__organization__isnull=False,
        )
        .select_related("account__organization__connected_account")
        .order_by("account__organization__name", "pk")
    )
    pending = {
        payout.organization_id: payout
        for payout in Payout.objects.filter(status=Payout.Status.PENDING, currency=currency)
    }
    due = []
    for balance in balances:
        organization = balance.account.organization
        assert organization is not None
        available = balance.credit_side_available
        if available <= 0 and organization.pk not in pending:
            continue
        due.append(
            PayoutDue(
                organization=organization,
                available_micros=available,
                reserved_micros=balance.debits_pending,
                connected_account=getattr(organization, "connected_account", None),
                pending=pending.get(organization.pk),
                minimum_micros=minimum,
            )
        )
    due.sort(key=lambda row: (-row.available_micros, row.organization.name))
    recent = list(
        Payout.objects.filter(currency=currency)
        .select_related("organization")
        .order_by("-created_at", "-pk")[:PAYOUTS_RECENT]
    )
    failed = Payout.objects.filter(currency=currency, status=Payout.Status.FAILED).count()
    return PayoutsDue(currency, minimum, due, recent, len(pending), failed)


# --- invoice collection ---------------------------------------------------------------


def invoice_for_collection(*, caller: Caller, invoice_id: int) -> Invoice:
    """A finalized invoice of the caller's org (any, for operator finance); 404 else."""
    rows = Invoice.objects.filter(pk=invoice_id).exclude(status=Invoice.Status.DRAFT)
    if not caller.is_platform_finance:
        rows = rows.filter(organization=caller.organization)
    found = rows.first()
    if found is None:
        raise NotFound(
            f"no finalized invoice {invoice_id} in your organization",
            details={"invoice": invoice_id},
        )
    return found


def invoice_payments_for_caller(
    *, caller: Caller, invoice_id: int | None = None
) -> QuerySet[InvoicePayment]:
    """Collection attempts the caller may see, of one invoice if named (404 when that
    invoice is not the caller's to see)."""
    rows = InvoicePayment.objects.select_related("invoice")
    if not caller.is_platform_finance:
        rows = rows.filter(organization=caller.organization)
    if invoice_id is not None:
        invoice = invoice_for_collection(caller=caller, invoice_id=invoice_id)
        rows = rows.filter(invoice=invoice)
    return rows


def invoice_collection_for(*, invoice: Invoice) -> InvoiceCollection | None:
    return InvoiceCollection.objects.filter(invoice=invoice).first()


def invoice_payment_get(*, caller: Caller, payment_id: int) -> InvoicePayment:
    found = invoice_payments_for_caller(caller=caller).filter(pk=payment_id).first()
    if found is None:
        raise NotFound(
            f"no invoice payment {payment_id} in your organization",
            details={"payment": payment_id},
        )
    return found


def refunds_for_invoice_payment(*, payment: InvoicePayment) -> QuerySet[InvoiceRefund]:
    return payment.refunds.order_by("pk")
