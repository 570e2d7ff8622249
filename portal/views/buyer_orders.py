"""Orders and leases, the buyer's side: the orders (paged, by state), an order's page
with its leases and what each cost so far, cancel (admins and members, as in the
API: the reservation is released, live leases end now and are billed to now), and
every lease. Another organization's order is a 404."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError
from marketplace import selectors as market
from marketplace import services as market_writes
from marketplace.models import Order
from portal.access import BUYER_KINDS, OPERATORS, member_page
from portal.views.paging import page_of


def _organization(request: HttpRequest):
    return request.member.organization  # type: ignore[attr-defined]


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def order_list(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    if state not in Order.State.values:
        state = ""  # an unknown state shows every order, as an empty filter does
    orders = market.orders_for_org(organization=_organization(request), state=state or None)
    return render(
        request,
        "portal/buyer/orders.html",
        {
            "page": page_of(request, orders.order_by("-pk")),
            "state": state,
            "states": Order.State.choices,
            "pager_query": f"state={state}&" if state else "",
        },
    )


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def order_detail(request: HttpRequest, order_id: int) -> HttpResponse:
    organization = _organization(request)
    order = market.order_get(organization=organization, order_id=order_id)
    leases = market.leases_for_org(organization=organization, order_id=order.pk).order_by("pk")
    return render(
        request,
        "portal/buyer/order.html",
        {
            "order": order,
            "leases": list(leases),
            "billed_micros": sum(lease.billed_micros for lease in leases),
            "live": order.state in Order.LIVE_STATES,
        },
    )


@require_POST
@member_page(kinds=BUYER_KINDS, roles=OPERATORS)
def order_cancel(request: HttpRequest, order_id: int) -> HttpResponse:
    order = market.order_get(organization=_organization(request), order_id=order_id)
    try:
        market_writes.order_cancel(order=order)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            f"Cancelled order {order.pk}: its reservation is released and its leases "
            "ended, billed to now.",
        )
    return redirect("portal:console-order", order_id=order.pk)


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def lease_list(request: HttpRequest) -> HttpResponse:
    leases = market.leases_for_org(organization=_organization(request)).order_by("-pk")
    return render(request, "portal/buyer/leases.html", {"page": page_of(request, leases)})
