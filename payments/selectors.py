"""Reads of payments, scoped to the caller here so no view can forget it.

A buyer sees its own top-ups, refunds and its invoices' collection attempts; a
provider its own connected account and payouts (with the payable's journal lines
each covers); finance staff of the operator see all of it, and the reconciliation.
Another org's id answers 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.db.models import QuerySet

from core.errors import NotFound
from core.models import Organization
from core.tenancy import Caller
from invoicing.models import Invoice
from ledger.models import Account, Posting
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
