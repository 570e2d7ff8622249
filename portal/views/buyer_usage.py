"""Usage: the organization's tokens and GPU-seconds by day and product over a period,
with their cost (marketplace.selectors), filterable by period, product and model; and
the same rows as CSV. Every member reads it."""

from __future__ import annotations

import csv

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from core.money import Money
from marketplace.selectors import UsageReport, usage_by_day
from portal.access import BUYER_KINDS, member_page
from portal.views.buyer_checkout import member_caller
from portal.workload_forms import UsageFilterForm


def _report(request: HttpRequest) -> tuple[UsageFilterForm, UsageReport | None]:
    now = timezone.now()
    today = now.date()
    data = request.GET.copy()  # this month so far unless the filter says otherwise
    if not data.get("since") and not data.get("until"):
        data.update({"since": today.replace(day=1).isoformat(), "until": today.isoformat()})
    form = UsageFilterForm(data, today=today)
    if not form.is_valid():
        return form, None
    values = form.cleaned_data
    report = usage_by_day(
        caller=member_caller(request),
        since=values["since"],
        until=values["until"],
        currency=settings.TANDEM_CURRENCY,
        product=values.get("product") or None,
        model=values.get("model") or None,
        now=now,
    )
    return form, report


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def usage(request: HttpRequest) -> HttpResponse:
    form, report = _report(request)
    context = {"form": form, "report": report, "query": request.GET.urlencode()}
    return render(request, "portal/buyer/usage.html", context, status=200 if report else 400)


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def usage_csv(request: HttpRequest) -> HttpResponse:
    """The page's rows, one per day, product and model, amounts as decimal text."""
    form, report = _report(request)
    if report is None:
        return render(request, "portal/buyer/usage.html", {"form": form}, status=400)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    name = f"usage-{report.since.isoformat()}-{report.until.isoformat()}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    writer = csv.writer(response)
    writer.writerow(["day", "product", "model", "quantity", "unit", "cost", "currency"])
    for row in report.rows:
        cost = "" if row.amount_micros is None else Money(row.amount_micros, row.currency).format()
        writer.writerow(
            [
                row.day.isoformat(),
                row.product_name,
                row.model,
                row.quantity,
                row.unit,
                cost,
                row.currency,
            ]
        )
    return response
