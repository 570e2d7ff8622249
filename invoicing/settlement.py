"""Settlement."""

from __future__ import annotations

from dataclasses import dataclass

from core.money import rate_amount
from invoicing.amounts import cents
from invoicing.calculations import Computed
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
