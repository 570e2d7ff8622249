"""The running month's draft invoice: recomputed on request and by the month close,
never numbered; a draft's document is a preview, not a final one."""

from __future__ import annotations

import hashlib
from datetime import date, datetime

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from core.db import (
    retry_transaction,
)
from core.errors import InvalidInput
from core.models import Organization
from invoicing.calculations import invoice_compute
from invoicing.documents import _document, _profile, canonical
from invoicing.lines import Computed
from invoicing.models import (
    Invoice,
)
from invoicing.periods import grace, issuer, month_bounds, monthly_key
from invoicing.settlement import totals_of
from invoicing.writers import _write_lines

# --- drafts -------------------------------------------------------------------------


@retry_transaction
def invoice_draft_refresh(
    *,
    organization: Organization,
    period: date,
    currency: str | None = None,
    now: datetime | None = None,
) -> Invoice | None:
    """Create or recompute the org's draft for a month; a finalized invoice is
    returned as it is. None when the month charged the org nothing."""
    currency = currency or settings.TANDEM_CURRENCY
    now = now or timezone.now()
    key = monthly_key(organization.pk, period, currency)
    invoice = Invoice.objects.select_for_update().filter(key=key).first()
    if invoice is not None and invoice.status != Invoice.Status.DRAFT:
        return invoice
    computed = invoice_compute(organization=organization, currency=currency, period=period)
    if not computed.lines:
        if invoice is not None:
            invoice.delete()
        return None
    start, end = month_bounds(period)
    if invoice is None:
        invoice = Invoice(
            key=key,
            organization=organization,
            kind=Invoice.Kind.MONTHLY,
            currency=currency,
            period_start=start,
            period_end=end,
            issuer=issuer(),
            generated_at=now,
            grace_ends_at=end + grace(),
        )
    _apply_draft(invoice, computed, now)
    return invoice


def _apply_draft(invoice: Invoice, computed: Computed, now: datetime) -> None:
    buyer = _profile(invoice.organization)
    totals = totals_of(computed, invoice.currency, buyer["tax_rate_bps"])
    invoice.subtotal_exact_micros = totals.exact
    invoice.subtotal_micros = totals.subtotal
    invoice.rounding_micros = totals.rounding
    invoice.tax_rate_bps = totals.tax_rate_bps
    invoice.tax_micros = totals.tax
    invoice.total_micros = totals.total
    invoice.prepaid_applied_micros = computed.prepaid_micros
    invoice.amount_due_micros = totals.total - computed.prepaid_micros
    invoice.generated_at = now
    invoice.document = _document(
        invoice=invoice,
        computed=computed,
        totals=totals,
        buyer=buyer,
        number=None,
        finalized_at=None,
        due_at=None,
        prepaid_applied=computed.prepaid_micros,
    )
    invoice.document_sha256 = hashlib.sha256(canonical(invoice.document)).hexdigest()
    invoice.save()
    _write_lines(invoice, computed)


def invoice_draft_current(
    *, organization: Organization, period: date, now: datetime | None = None
) -> Invoice | None:
    """The org's invoice of a month as it stands now, for its members to read: the
    draft recomputed from the journal (a finalized invoice as it is); None when the
    month charged nothing yet. A month that has not begun is refused."""
    now = now or timezone.now()
    start, _ = month_bounds(period)
    if start > now:
        raise InvalidInput(f"{period:%Y-%m} has not begun yet", details={"field": "period"})
    try:
        return invoice_draft_refresh(organization=organization, period=period, now=now)
    except IntegrityError:
        # A concurrent request created this month's draft first: refresh that one.
        return invoice_draft_refresh(organization=organization, period=period, now=now)
