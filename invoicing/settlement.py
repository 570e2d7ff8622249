"""The one finalization rule: what an invoice totals, how much of the buyer's prepaid
credit it applies, what is left owed, and the journal legs that record it. The single
finalization (``invoice_finalize``), the month close (``period_close``) and replay
(``invoices_rebuild``) all settle an invoice through ``settle`` and ``settlement_legs``
and nothing else, so the three cannot drift apart.

- totals: each line rounded to the currency's minor unit, the difference from the
  exact journal amounts is ``rounding``; tax on the rounded subtotal, rounded once;
- credit applied: what the usage charges did not already take from prepaid credit
  (``computed.prepaid_micros``), up to the credit still available, never below zero;
- owed: rounding and tax not covered by the credit applied, posted to the buyer's
  receivable — which is opened only when something is posted to it, so a prepaid
  buyer whose credit covered everything never gets one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from core.money import rate_amount
from invoicing.amounts import cents
from invoicing.lines import Computed
from invoicing.models import (
    Invoice,
)
from pricing.selectors import BPS


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


@dataclass(frozen=True, slots=True)
class Settlement:
    totals: Totals
    applied_micros: int  # prepaid credit applied at finalization
    owed_micros: int  # rounding and tax left, posted to the receivable (may be negative)
    prepaid_micros: int  # all the prepaid credit the invoice shows as applied

    @property
    def needs_receivable(self) -> bool:
        return self.owed_micros != 0


def settle(
    computed: Computed, *, currency: str, tax_rate_bps: int, available_credit_micros: int
) -> Settlement:
    """The invoice's settlement, with ``available_credit_micros`` of prepaid credit
    left to apply (posted minus pending, as the buyer's balance has it now)."""
    totals = totals_of(computed, currency, tax_rate_bps)
    applied = max(0, min(totals.total - computed.prepaid_micros, available_credit_micros))
    return Settlement(
        totals=totals,
        applied_micros=applied,
        owed_micros=totals.rounding + totals.tax - applied,
        prepaid_micros=computed.prepaid_micros + applied,
    )


def settlement_legs(
    settlement: Settlement,
    *,
    receivable: int | None,
    credit: int | None,
    rounding: int,
    tax_payable: int,
) -> dict[int, int]:
    """The settlement's journal legs, signed by account id (a debit positive): the
    receivable for what is owed, rounding and tax payable, the credit applied. The
    receivable and credit accounts are needed only when something posts to them."""
    signed: dict[int, int] = defaultdict(int)
    if settlement.owed_micros:
        if receivable is None:
            raise ValueError("a settlement that owes something needs the receivable")
        signed[receivable] += settlement.owed_micros
    signed[rounding] -= settlement.totals.rounding
    signed[tax_payable] -= settlement.totals.tax
    if settlement.applied_micros:
        if credit is None:
            raise ValueError("a settlement that applies credit needs the credit account")
        signed[credit] += settlement.applied_micros
    return signed


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
