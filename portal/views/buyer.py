"""The buyer console. This slice: the dashboard (credit, holds, spend, runway, alerts)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from ledger import selectors as books
from portal.access import BUYER_KINDS, member_page


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def dashboard(request: HttpRequest) -> HttpResponse:
    overview = books.credit_overview(
        organization=request.member.organization,  # type: ignore[attr-defined]
        currency=settings.TANDEM_CURRENCY,
    )
    return render(request, "portal/buyer/dashboard.html", {"overview": overview})
