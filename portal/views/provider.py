"""The provider portal. This slice: the overview (earnings net of the platform fee,
GPU-hours leased against listed this month, the nodes and their health)."""

from __future__ import annotations

from datetime import UTC, datetime, time

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from ledger import selectors as books
from marketplace import selectors as market
from portal.access import PROVIDER_KINDS, member_page
from portal.views.paging import page_of
from providers import selectors as supply


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def overview(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    now = timezone.now()
    month_start = datetime.combine(now.date().replace(day=1), time.min, tzinfo=UTC)
    listed = supply.listed_gpu_seconds_by_day(organization=organization, days=now.day, now=now)
    nodes = supply.nodes_for_org(organization=organization).order_by("hostname", "pk")
    return render(
        request,
        "portal/provider/overview.html",
        {
            "earnings": books.earnings_overview(
                organization=organization, currency=settings.TANDEM_CURRENCY, now=now
            ),
            "gpu_seconds_leased": market.gpu_seconds_leased(
                provider=organization, since=month_start, until=now
            ),
            "gpu_seconds_listed": sum(day.gpu_seconds_listed for day in listed),
            "month_start": month_start,
            "now": now,
            "page": page_of(request, nodes),
        },
    )
