"""Saved payment methods: the cards Stripe holds for the buyer's customer, which one
auto-recharge and invoice collection charge (the default), make another the default,
remove one. Every member sees them; admins and finance staff change them. A card
id that is not one of the organization's answers 404 (payments checks it on
Stripe's own record of the card's customer)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError, NotFound
from payments import selectors as payments
from payments import services as paying
from payments.services import PaymentsUnavailable, stripe_configured
from portal.access import BUYER_KINDS, member_actor, member_page
from portal.views.buyer_checkout import NOT_SET_UP, PAYERS


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def payment_methods(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    saved, unavailable = None, ""
    if not stripe_configured():
        unavailable = NOT_SET_UP
    else:
        try:
            saved = payments.payment_methods_list(organization=organization)
        except PaymentsUnavailable as error:
            unavailable = error.message
    return render(
        request,
        "portal/buyer/payment_methods.html",
        {
            "saved": saved,
            "unavailable": unavailable,
            "setting": payments.auto_recharge_for(organization=organization),
            "can_change": request.member.role in PAYERS,  # type: ignore[attr-defined]
        },
    )


def _change(request: HttpRequest, payment_method_id: str, *, remove: bool) -> HttpResponse:
    write = paying.payment_method_remove if remove else paying.payment_method_make_default
    try:
        write(
            organization=request.member.organization,  # type: ignore[attr-defined]
            payment_method_id=payment_method_id,
            actor=member_actor(request),
        )
    except NotFound:
        raise  # another organization's card: as good as absent
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        if remove:
            messages.success(request, f"Removed the card {payment_method_id}.")
        else:
            messages.success(
                request,
                f"The card {payment_method_id} is now the default: auto-recharge and "
                "invoice collection charge it.",
            )
    return redirect("portal:payment-methods")


@require_POST
@member_page(roles=PAYERS, kinds=BUYER_KINDS)
def payment_method_make_default(request: HttpRequest, payment_method_id: str) -> HttpResponse:
    return _change(request, payment_method_id, remove=False)


@require_POST
@member_page(roles=PAYERS, kinds=BUYER_KINDS)
def payment_method_remove(request: HttpRequest, payment_method_id: str) -> HttpResponse:
    return _change(request, payment_method_id, remove=True)
