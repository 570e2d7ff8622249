"""The operator's finance pages, the books: the overview (revenue by month, chart and
table), the trial balance by currency, the journal (filtered, paged) and the accounts
with their balances. Read through ledger.selectors, which decide what a caller sees;
every page is the operator's finance staff's only (``portal.access.finance_page``)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from exports import selectors as reports
from invoicing import selectors as invoices
from ledger import selectors as books
from portal.access import finance_page, member_caller
from portal.finance_forms import AccountFilterForm, JournalFilterForm
from portal.views.paging import page_of

REVENUE_MONTHS = 12
PRODUCT_NAMES = {
    "fine_tune": "Fine-tuning",
    "inference": "Inference",
    "gpu_lease": "GPU leases",
    "credit_note": "Credit notes",
    "invoice_void": "Voided invoices",
    "adjustment": "Adjustments",
    "unattributed": "Unattributed",
    "other": "Other",
}
CLOSE_MONTHS = 6


@require_http_methods(["GET"])
@finance_page
def overview(request: HttpRequest) -> HttpResponse:
    """Revenue and fees by month and product (a chart over the table that says the
    same; the revenue export's attribution: usage in the month it was used), and
    where the last months' closes stand."""
    currency = settings.TANDEM_CURRENCY
    now = timezone.now()
    pivot = reports.revenue_by_month(currency=currency, months=REVENUE_MONTHS, until=now.date())
    products = [str(product) for product in pivot.columns]
    months = [
        {
            "month": month,
            "amounts": [int(pivot.at[month, product]) for product in products],
            "total_micros": sum(int(pivot.at[month, product]) for product in products),
        }
        for month in pivot.index
    ]
    chart = {
        "type": "bar",
        "stacked": True,
        "unit": currency,
        "labels": [month["month"] for month in months],
        # The picture needs no exactness (the table under it has the exact amounts).
        "datasets": [
            {
                "label": PRODUCT_NAMES.get(product, product),
                "data": [month["amounts"][n] / 1_000_000 for month in months],
            }
            for n, product in enumerate(products)
        ],
    }
    return render(
        request,
        "portal/finance/overview.html",
        {
            "currency": currency,
            "products": [PRODUCT_NAMES.get(product, product) for product in products],
            "months": list(reversed(months)),
            "chart": chart,
            "closes": invoices.months_close_status(months=CLOSE_MONTHS, now=now),
            "now": now,
        },
    )


@require_http_methods(["GET"])
@finance_page
def trial_balance(request: HttpRequest) -> HttpResponse:
    """Posted debits and credits by account kind (the organizations' accounts of a
    kind summed, as a control account: the page stays one screen whatever the
    number of buyers; the accounts page lists each), with each currency's totals."""
    balance = books.trial_balance_by_kind()
    by_currency = [
        (total, [group for group in balance.groups if group.currency == total.currency])
        for total in balance.totals
    ]
    return render(
        request,
        "portal/finance/trial_balance.html",
        {"balance": balance, "by_currency": by_currency, "now": timezone.now()},
    )


@require_http_methods(["GET"])
@finance_page
def journal(request: HttpRequest) -> HttpResponse:
    form = JournalFilterForm(request.GET or None)
    lines = None
    if not form.is_bound or form.is_valid():
        since, until = form.bounds() if form.is_bound else (None, None)
        lines = (
            books.journal_lines(
                caller=member_caller(request),
                account_id=form.cleaned_data.get("account") if form.is_bound else None,
                since=since,
                until=until,
            )
            .select_related("account__organization")
            .order_by("-entry_id", "-pk")
        )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "portal/finance/journal.html",
        {
            "form": form,
            "page": page_of(request, lines) if lines is not None else None,
            "pager_query": f"{query.urlencode()}&" if query else "",
        },
        status=200 if lines is not None else 400,
    )


@require_http_methods(["GET"])
@finance_page
def account_list(request: HttpRequest) -> HttpResponse:
    form = AccountFilterForm(request.GET or None)
    kind = form.cleaned_data.get("kind") or None if form.is_valid() else None
    accounts = books.accounts_visible(caller=member_caller(request), kind=kind)
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "portal/finance/accounts.html",
        {
            "form": form,
            "page": page_of(request, accounts),
            "pager_query": f"{query.urlencode()}&" if query else "",
        },
        status=400 if form.is_bound and not form.is_valid() else 200,
    )
