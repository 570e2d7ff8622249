"""The provider's earnings over a period of days (this month so far unless another is
chosen), by day (a chart over the table that says the same), by node and by offer,
each downloadable as CSV. Read through ``invoicing.selectors.
provider_earnings_breakdown``, which attributes every credit to the provider's
payable as its monthly statement does, so the views add up to the statement."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from core.money import Money
from invoicing import selectors as statements
from portal.access import PROVIDER_KINDS, member_page
from portal.provider_forms import EarningsPeriodForm

CSV_COLUMNS = ["gpu_seconds", "gpu_hours", "gross", "platform_fee", "net_payable", "currency"]
CSV_KEYS = {"day": "day", "node": "node", "offer": "offer"}


def _period(request: HttpRequest) -> tuple[EarningsPeriodForm, statements.ProviderEarnings | None]:
    form = EarningsPeriodForm(request.GET, today=timezone.now().date())
    if not form.is_valid():
        return form, None
    since, until = form.cleaned_data["since"], form.cleaned_data["until"]
    found = statements.provider_earnings_breakdown(
        provider=request.member.organization,  # type: ignore[attr-defined]
        since=datetime.combine(since, time.min, tzinfo=UTC),
        until=datetime.combine(until + timedelta(days=1), time.min, tzinfo=UTC),
        currency=settings.TANDEM_CURRENCY,
    )
    return form, found


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def breakdown(request: HttpRequest) -> HttpResponse:
    form, found = _period(request)
    if found is None:
        return render(
            request, "portal/provider/breakdown.html", {"form": form, "earnings": None}, status=400
        )
    chart = {
        "type": "bar",
        "unit": found.currency,
        "labels": [row.label for row in found.by_day],
        # The picture needs no exactness (the table under it has the exact amounts).
        "datasets": [
            {
                "label": "Earned at lease prices",
                "data": [row.gross_micros / 1_000_000 for row in found.by_day],
            }
        ],
    }
    query = {"since": form.cleaned_data["since"], "until": form.cleaned_data["until"]}
    return render(
        request,
        "portal/provider/breakdown.html",
        {
            "form": form,
            "earnings": found,
            "currency": found.currency,
            "chart": chart,
            "last_day": form.cleaned_data["until"],
            "csv_query": f"since={query['since']:%Y-%m-%d}&until={query['until']:%Y-%m-%d}",
            "views": [
                ("day", "By day", "Day", found.by_day),
                ("node", "By node", "Node", found.by_node),
                ("offer", "By offer", "Offer", found.by_offer),
            ],
        },
    )


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def breakdown_csv(request: HttpRequest) -> HttpResponse:
    """One view of the period as CSV (``by``: day, node or offer), amounts as decimal
    text; a bad period is refused with what is wrong (400)."""
    form, found = _period(request)
    if found is None:
        errors = "; ".join(f"{field}: {' '.join(e)}" for field, e in form.errors.items())
        return HttpResponse(errors, status=400, content_type="text/plain; charset=utf-8")
    by = form.cleaned_data["by"]
    rows = {"day": found.by_day, "node": found.by_node, "offer": found.by_offer}[by]
    since, until = form.cleaned_data["since"], form.cleaned_data["until"]
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="earnings-by-{by}-{since:%Y-%m-%d}-{until:%Y-%m-%d}.csv"'
    )
    writer = csv.writer(response)
    writer.writerow([CSV_KEYS[by], *CSV_COLUMNS])
    for row in [*rows, found.total]:
        writer.writerow(
            [
                row.label,
                row.gpu_seconds,
                f"{row.gpu_seconds / 3600:.4f}",
                Money(row.gross_micros, found.currency).format(),
                Money(row.fee_micros, found.currency).format(),
                Money(row.gross_micros, found.currency).format(),
                found.currency,
            ]
        )
    return response
