"""The provider's money pages: earnings by month (the statements written when each
month closed, and this month so far; a chart over the table that says the same), a
month's statement line by line with its CSV, and payouts with the Stripe Connect
account they go to (its state, and the onboarding link for an admin)."""

from __future__ import annotations

import csv

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError
from invoicing import selectors as statements
from payments import selectors as payouts
from payments import services as payments
from portal.access import ADMIN, PROVIDER_KINDS, member_caller, member_page
from portal.finance_forms import month_in_url
from portal.views.paging import page_of

MONTHS_PER_PAGE = 12
CSV_COLUMNS = [
    "node",
    "gpu_model",
    "gpu_seconds",
    "gpu_hours",
    "gross",
    "platform_fee",
    "net_payable",
    "currency",
]


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def earnings(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    now = timezone.now()
    currency = settings.TANDEM_CURRENCY
    closed = (
        statements.statements_for_caller(
            caller=member_caller(request), organization_id=organization.pk
        )
        .filter(currency=currency)
        .defer("document")
        .order_by("-period_start")
    )
    page = page_of(request, closed, per_page=MONTHS_PER_PAGE)
    current = statements.statement_for_period(
        provider=organization, period=now.date().replace(day=1), now=now, currency=currency
    )
    totals = current.document["totals"]
    months = [
        {
            "period": current.period,
            "closed": False,
            "gpu_seconds": totals["gpu_seconds"],
            "net_payable_micros": totals["net_payable"]["micros"],
            "payouts_micros": totals["payouts"]["micros"],
        }
    ] * (page.number == 1)
    months += [
        {
            "period": statement.period_start.date(),
            "closed": True,
            "gpu_seconds": statement.gpu_seconds,
            "net_payable_micros": statement.net_payable_micros,
            "payouts_micros": statement.payouts_micros,
        }
        for statement in page.object_list
    ]
    chart = {
        "type": "bar",
        "unit": currency,
        "labels": [f"{month['period']:%Y-%m}" for month in reversed(months)],
        # The picture needs no exactness (the table beside it has the exact amounts).
        "datasets": [
            {
                "label": "Earned, net of the platform fee",
                "data": [month["net_payable_micros"] / 1_000_000 for month in reversed(months)],
            }
        ],
    }
    return render(
        request,
        "portal/provider/earnings.html",
        {"months": months, "page": page, "chart": chart, "currency": currency, "now": now},
    )


def _statement(request: HttpRequest, period: str) -> statements.StatementView:
    now = timezone.now()
    return statements.statement_for_period(
        provider=request.member.organization,  # type: ignore[attr-defined]
        period=month_in_url(period, today=now.date()),
        now=now,
        currency=settings.TANDEM_CURRENCY,
    )


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def statement_detail(request: HttpRequest, period: str) -> HttpResponse:
    found = _statement(request, period)
    return render(
        request,
        "portal/provider/statement.html",
        {"statement": found, "doc": found.document, "period_text": period},
    )


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def statement_csv(request: HttpRequest, period: str) -> HttpResponse:
    """The statement's lines, one per node and GPU model, amounts as decimal text."""
    found = _statement(request, period)
    doc = found.document
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="statement-{found.period:%Y-%m}.csv"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for line in doc["lines"]:
        writer.writerow(
            [
                line["node"],
                line["gpu_model"],
                line["gpu_seconds"],
                line["gpu_hours"],
                line["gross"]["text"],
                line["platform_fee"]["text"],
                line["net_payable"]["text"],
                doc["currency"],
            ]
        )
    return response


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def payout_list(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    found = (
        payouts.payouts_for_caller(caller=member_caller(request))
        .filter(organization=organization)
        .order_by("-created_at", "-pk")
    )
    return render(
        request,
        "portal/provider/payouts.html",
        {
            "page": page_of(request, found),
            "account": payouts.connected_account_for(organization=organization),
        },
    )


@require_POST
@member_page(roles=[ADMIN], kinds=PROVIDER_KINDS)
def connect_onboarding(request: HttpRequest) -> HttpResponse:
    """Open (once) the organization's Stripe Connect account and send the admin to
    Stripe's onboarding, which comes back to the payouts page. The link expires in
    minutes, so it is made on each request and never stored."""
    organization = request.member.organization  # type: ignore[attr-defined]
    back = request.build_absolute_uri(reverse("portal:provider-payouts"))
    try:
        account = payments.connected_account_create(
            organization=organization, email=getattr(request.user, "email", "")
        )
        link = payments.account_link_create(
            connected_account=account, refresh_url=back, return_url=back
        )
    except ApplicationError as error:
        messages.error(request, f"Stripe could not start onboarding: {error.message}")
        return redirect("portal:provider-payouts")
    return redirect(link)
