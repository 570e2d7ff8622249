"""The operator's finance pages for what the platform owes and is owed: prepaid-credit
liability (the buyers' unused credit, by currency, its largest holders), receivables
aging (what buyers still owe, by days past due), the reconciliation (the ledger
against invoices, payments and payouts, and Stripe clearing against Stripe, every
difference with its cause) and the providers' payouts due with the payout run's
state. Reads only, through the selectors of ledger, invoicing, payments and exports."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from exports import selectors as reports
from invoicing import selectors as invoices
from ledger import selectors as books
from payments import selectors as payments
from portal.access import finance_page
from portal.finance_forms import AgingForm, CurrencyForm
from portal.views.paging import page_of

SECTION_NAMES = {
    "journal": "Journal: debits against credits",
    "receivables": "Receivables against invoices still owed",
    "tax": "Tax payable against invoiced tax",
    "rounding": "Rounding against invoiced rounding",
    "payments_received": "Stripe clearing: payments received",
    "refunds_and_disputes": "Stripe clearing: refunds and disputes",
    "payouts_sent": "Stripe clearing: payouts sent",
    "other_clearing": "Stripe clearing: anything else",
}
STRIPE_DIFFERENCES = {
    "missing_in_stripe": "in the ledger, not at Stripe",
    "missing_in_ledger": "at Stripe, not in the ledger",
    "amount_mismatch": "the ledger and Stripe disagree on the amount",
}


@require_http_methods(["GET"])
@finance_page
def liability(request: HttpRequest) -> HttpResponse:
    """Prepaid credit is a liability until it is used: what every buyer holds."""
    return render(
        request,
        "portal/finance/liability.html",
        {
            "liabilities": books.credit_liability(),
            "top": books.LIABILITY_TOP_HOLDERS,
            "now": timezone.now(),
        },
    )


@require_http_methods(["GET"])
@finance_page
def aging(request: HttpRequest) -> HttpResponse:
    """What buyers still owe on finalized invoices, by days past due, on a day."""
    form = AgingForm(request.GET or None)
    valid = form.is_valid() if form.is_bound else True
    day = form.cleaned_data.get("as_of") if form.is_bound and valid else None
    now = timezone.now()
    # A day means through its end; today means now.
    as_of = (
        datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC) - timedelta(microseconds=1)
        if day is not None and day < now.date()
        else now
    )
    aging = invoices.receivables_aging(as_of=as_of) if valid else None
    day_query = f"as_of={day.isoformat()}&" if day is not None else ""
    return render(
        request,
        "portal/finance/aging.html",
        {
            "form": form,
            "aging": aging,
            # The buyers page (the totals are of them all): a thousand rows would cost
            # more to draw than to age.
            "page": page_of(request, aging.rows) if aging is not None else None,
            "pager_query": day_query,
            "buckets": [invoices.BUCKET_NAMES[b] for b in invoices.AGING_BUCKETS],
            "as_of": as_of,
        },
        status=200 if valid else 400,
    )


@require_http_methods(["GET"])
@finance_page
def reconciliation(request: HttpRequest) -> HttpResponse:
    """Every difference between the ledger and what the documents say it holds, with
    its cause; unexplained is 0.00 on a correct system. Below it, the newest daily
    reconciliation of Stripe clearing against Stripe's balance transactions."""
    form = CurrencyForm(request.GET or None, initial={"currency": settings.TANDEM_CURRENCY})
    if form.is_bound and not form.is_valid():
        return render(
            request,
            "portal/finance/reconciliation.html",
            {"form": form, "report": None},
            status=400,
        )
    currency = form.cleaned_data.get("currency") if form.is_bound else None
    currency = currency or settings.TANDEM_CURRENCY
    report = reports.reconciliation_report(currency=currency, fresh="fresh" in request.GET)
    sections = [
        {"name": SECTION_NAMES.get(section.name, section.name), "section": section}
        for section in report.sections
    ]
    stripe = payments.reconciliation_latest(currency=currency)
    return render(
        request,
        "portal/finance/reconciliation.html",
        {
            "form": form,
            "report": report,
            "currency": currency,
            "sections": sections,
            "differences": [
                {"section": SECTION_NAMES.get(d.section, d.section), "difference": d}
                for d in report.differences
            ],
            "stripe": stripe,
            "stripe_differences": [
                {"difference": d, "cause": STRIPE_DIFFERENCES.get(d.kind, d.kind)}
                for d in stripe.differences
            ],
        },
    )


@require_http_methods(["GET"])
@finance_page
def payouts_due(request: HttpRequest) -> HttpResponse:
    """What each provider has earned and not been paid, whether the next payout run
    pays it (and why not), and the runs' latest payouts."""
    return render(
        request,
        "portal/finance/payouts.html",
        {"payouts": payments.payouts_due(currency=settings.TANDEM_CURRENCY), "now": timezone.now()},
    )
