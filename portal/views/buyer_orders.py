"""Orders and leases, the buyer's side: place an order for raw GPUs with the market's
current prices beside the form, the orders (paged, by state), an order's page
with its leases and what each cost so far, cancel (admins and members, as in the
API: the reservation is released, live leases end now and are billed to now), and
every lease. Another organization's order is a 404."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core import services as tenancy
from core.errors import ApplicationError, Conflict, IdempotencyConflict, InsufficientFunds
from core.models import Organization
from core.money import Money
from ledger import selectors as books
from marketplace import selectors as market
from marketplace import services as market_writes
from marketplace.models import Order
from portal.access import BUYER_KINDS, OPERATORS, member_page
from portal.forms import add_service_error
from portal.views.paging import page_of
from portal.workload_forms import OrderPlaceForm
from providers import catalog


def _organization(request: HttpRequest):
    return request.member.organization  # type: ignore[attr-defined]


def _place(
    form: OrderPlaceForm,
    claim: tenancy.IdempotencyClaim,
    organization: Organization,
    spec: market_writes.OrderSpec,
) -> Order | None:
    """Place the order under the form's claimed key: kept with the order placed, given
    back when refused (the corrected form is sent under the same key)."""
    try:
        order = market_writes.order_place(organization=organization, spec=spec)
    except BaseException as error:
        tenancy.idempotent_request_release(claim=claim.request)
        if isinstance(error, InsufficientFunds):
            form.add_error(
                "max_price",
                f"Not enough credit to reserve this order's most it can cost: {error.message}. "
                "Lower the price, the GPUs or the hours, or add credit.",
            )
            return None
        if isinstance(error, ApplicationError):
            add_service_error(form, error)
            return None
        raise
    tenancy.idempotent_request_complete(
        claim=claim.request, status_code=201, response_body={"order": order.pk}
    )
    return order


def _claim(
    request: HttpRequest, organization: Organization, data: dict[str, Any]
) -> tenancy.IdempotencyClaim:
    """The form's key, claimed for these choices. IdempotencyConflict when the key
    placed an order with other choices; Conflict while the first send still runs."""
    choices = {k: v for k, v in sorted(data.items()) if k != "request_key"}
    digest = hashlib.sha256(json.dumps(choices, default=str).encode()).hexdigest()
    return tenancy.idempotent_request_claim(
        organization=organization,
        key=f"portal:order:{data['request_key']}",
        method="POST",
        path=request.path,
        request_hash=digest,
    )


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


def _order_form(data: object, lines: list[market.MarketLine], currency: str) -> OrderPlaceForm:
    """Every model in the catalog is a choice; the ones on the market today say from
    what price, and come first."""
    cheapest: dict[str, int] = {}
    for line in lines:
        low = cheapest.get(line.gpu_model)
        cheapest[line.gpu_model] = min(low, line.price_min_micros) if low else line.price_min_micros
    offered = [
        (m.slug, f"{m.name}: from {Money(cheapest[m.slug], currency)} an hour")
        for m in catalog.CATALOG
        if m.slug in cheapest
    ]
    others = [
        (m.slug, f"{m.name}: none offered now") for m in catalog.CATALOG if m.slug not in cheapest
    ]
    return OrderPlaceForm(data, models=offered + others, currency=currency)


@require_http_methods(["GET", "POST"])
@member_page(kinds=BUYER_KINDS, roles=OPERATORS)
def order_create(request: HttpRequest) -> HttpResponse:
    """The form beside the market: live offers by GPU model and kind, with their price
    range and free GPUs. A refusal (short of credit, a bound) shows beside the field
    it is about; short of credit, by how much."""
    organization = _organization(request)
    currency = settings.TANDEM_CURRENCY
    lines = [line for line in market.market_lines() if line.currency == currency]
    form = _order_form(request.POST or None, lines, currency)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        hours = data["duration_hours"] if data["length"] == "fixed" else None
        spec = market_writes.OrderSpec(
            gpu_models=[data["gpu_model"]],
            gpus_per_node=data["gpu_count"],
            duration_seconds=hours * 3600 if hours else None,
            kind=Order.Kind.INTERRUPTIBLE if data["interruptible"] else Order.Kind.ON_DEMAND,
            limit_price_per_gpu_hour_micros=data["max_price"],
        )
        try:
            claim = _claim(request, organization, data)
        except IdempotencyConflict:
            # The back button, a choice changed, sent again: a new key for new choices.
            fresh = request.POST.copy()
            fresh["request_key"] = uuid.uuid4().hex
            form = _order_form(fresh, lines, currency)
            form.is_valid()
            form.add_error(
                None,
                "This form already placed an order with other choices: "
                "check them and send it again.",
            )
        except Conflict:
            form.add_error(None, "This form is being sent already: see Orders in a moment.")
        else:
            if claim.replay is not None:
                placed = claim.replay[1]["order"]
                messages.info(request, f"This form already placed order {placed}.")
                return redirect("portal:console-order", order_id=placed)
            placed_order = _place(form, claim, organization, spec)
            if placed_order is not None:
                messages.success(
                    request,
                    f"Placed order {placed_order.pk}: "
                    f"{Money(placed_order.reserved_micros, placed_order.currency)} of "
                    "credit is reserved while it waits for GPUs.",
                )
                return redirect("portal:console-order", order_id=placed_order.pk)
    available = books.credit_overview(organization=organization, currency=currency)
    return render(
        request,
        "portal/buyer/order_new.html",
        {"form": form, "lines": lines, "overview": available},
        status=400 if form.errors else 200,
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
