"""The provider portal's market pages: offers (list with a status filter, create,
pause, resume, reprice, withdraw) and the leases on the provider's GPUs (the buyer is
not named). Every member reads; admins write, as in the API."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError
from core.money import Money
from marketplace import selectors as market
from portal.access import ADMIN, PROVIDER_KINDS, member_page
from portal.forms import add_service_error
from portal.provider_forms import (
    OfferCreateForm,
    OfferFilterForm,
    OfferRepriceForm,
    OfferWithdrawForm,
)
from portal.views.paging import page_of
from providers import selectors as supply
from providers import services as supply_writes
from providers.models import Offer


def _organization(request: HttpRequest):
    return request.member.organization  # type: ignore[attr-defined]


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def offer_list(request: HttpRequest) -> HttpResponse:
    """Newest first; ``?status=`` one of active, paused, withdrawn (a value that is none
    of them shows its error beside the filter and every offer)."""
    wanted = OfferFilterForm(request.GET or None)
    status = wanted.cleaned_data["status"] if wanted.is_valid() else None
    offers = (
        supply.offers_for_org(organization=_organization(request), status=status or None)
        .select_related("node")
        .order_by("-created_at", "-pk")
    )
    return render(
        request,
        "portal/provider/offers.html",
        {
            "page": page_of(request, offers),
            "filter": wanted if request.GET else OfferFilterForm(),
            "status": status or "",
            "pager_query": f"status={status}&" if status else "",
        },
    )


@require_http_methods(["GET", "POST"])
@member_page(kinds=PROVIDER_KINDS, roles=[ADMIN])
def offer_create(request: HttpRequest) -> HttpResponse:
    organization = _organization(request)
    form = OfferCreateForm(request.POST or None, organization=organization)
    if request.method == "POST" and form.is_valid():
        try:
            offer = supply_writes.offer_create(
                organization=organization, **form.service_arguments()
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            price = Money(offer.price_per_gpu_hour_micros, offer.currency)
            messages.success(
                request,
                f"Listed offer {offer.pk}: {offer.gpu_count} × {offer.gpu_model} "
                f"at {price} per GPU-hour.",
            )
            return redirect("portal:provider-offers")
    return render(request, "portal/provider/offer_new.html", {"form": form})


def _offer_page(
    request: HttpRequest,
    offer: Offer,
    *,
    reprice: OfferRepriceForm | None = None,
    withdraw: OfferWithdrawForm | None = None,
) -> HttpResponse:
    return render(
        request,
        "portal/provider/offer.html",
        {
            "offer": offer,
            "reprice": reprice or OfferRepriceForm(),
            "withdraw": withdraw or OfferWithdrawForm(),
        },
    )


def _offer(request: HttpRequest, offer_id: int) -> Offer:
    return supply.offer_get(organization=_organization(request), offer_id=offer_id)


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def offer_detail(request: HttpRequest, offer_id: int) -> HttpResponse:
    return _offer_page(request, _offer(request, offer_id))


def _refused(request: HttpRequest, offer: Offer, error: ApplicationError) -> HttpResponse:
    messages.error(request, error.message)
    return redirect("portal:provider-offer", offer.pk)


@require_POST
@member_page(kinds=PROVIDER_KINDS, roles=[ADMIN])
def offer_pause(request: HttpRequest, offer_id: int) -> HttpResponse:
    offer = _offer(request, offer_id)
    try:
        supply_writes.offer_pause(offer=offer)
    except ApplicationError as error:
        return _refused(request, offer, error)
    messages.success(request, f"Paused offer {offer.pk}: no new leases; running ones go on.")
    return redirect("portal:provider-offer", offer.pk)


@require_POST
@member_page(kinds=PROVIDER_KINDS, roles=[ADMIN])
def offer_resume(request: HttpRequest, offer_id: int) -> HttpResponse:
    offer = _offer(request, offer_id)
    try:
        supply_writes.offer_resume(offer=offer)
    except ApplicationError as error:
        return _refused(request, offer, error)
    messages.success(request, f"Resumed offer {offer.pk}: it takes new leases again.")
    return redirect("portal:provider-offer", offer.pk)


@require_POST
@member_page(kinds=PROVIDER_KINDS, roles=[ADMIN])
def offer_reprice(request: HttpRequest, offer_id: int) -> HttpResponse:
    offer = _offer(request, offer_id)
    form = OfferRepriceForm(request.POST)
    if form.is_valid():
        try:
            offer = supply_writes.offer_reprice(
                offer=offer, price_per_gpu_hour_micros=form.cleaned_data["price"]
            )
        except ApplicationError as error:
            if "fields" not in error.details:  # not about the price: the offer's state
                return _refused(request, offer, error)
            add_service_error(form, error)
        else:
            messages.success(
                request, f"Repriced offer {offer.pk} for new leases; running leases keep theirs."
            )
            return redirect("portal:provider-offer", offer.pk)
    return _offer_page(request, offer, reprice=form)


@require_POST
@member_page(kinds=PROVIDER_KINDS, roles=[ADMIN])
def offer_withdraw(request: HttpRequest, offer_id: int) -> HttpResponse:
    offer = _offer(request, offer_id)
    form = OfferWithdrawForm(request.POST)
    if not form.is_valid():
        return _offer_page(request, offer, withdraw=form)
    force = form.cleaned_data["force"]
    supply_writes.offer_withdraw(offer=offer, force=force)
    messages.success(
        request,
        f"Withdrew offer {offer.pk}: "
        + ("its running leases ended now." if force else "running leases run to their end."),
    )
    return redirect("portal:provider-offer", offer.pk)


# --- leases on my GPUs ----------------------------------------------------------


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def lease_list(request: HttpRequest) -> HttpResponse:
    leases = (
        market.leases_on_provider(provider=_organization(request))
        .select_related("node")
        .order_by("-created_at", "-pk")
    )
    return render(request, "portal/provider/leases.html", {"page": page_of(request, leases)})
