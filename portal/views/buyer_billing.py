"""Billing details: who the buyer's invoices are addressed to (legal name, address,
VAT or tax id), kept in invoicing's billing profile and printed on every invoice
finalized after. Every member sees them; admins and finance staff change them. The
tax rate is the operator's to set and is only shown."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError
from invoicing import selectors as invoices
from invoicing import services as invoicing
from portal.access import BUYER_KINDS, member_actor, member_page
from portal.buyer_forms import BillingDetailsForm
from portal.forms import add_service_error
from portal.views.buyer_checkout import PAYERS


def _page(request: HttpRequest, form: BillingDetailsForm, *, status: int = 200) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    profile = invoices.billing_profile_of(organization=organization)
    return render(
        request,
        "portal/buyer/billing_details.html",
        {
            "form": form,
            "profile": profile,
            "tax_rate": f"{profile.tax_rate_bps // 100}.{profile.tax_rate_bps % 100:02d}%",
            "can_change": request.member.role in PAYERS,  # type: ignore[attr-defined]
        },
        status=status,
    )


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def billing_details(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    profile = invoices.billing_profile_of(organization=organization)
    initial = {
        "legal_name": profile.legal_name or organization.name,
        "address": profile.address,
        "tax_id": profile.tax_id,
    }
    return _page(request, BillingDetailsForm(initial=initial))


@require_POST
@member_page(roles=PAYERS, kinds=BUYER_KINDS)
def billing_details_change(request: HttpRequest) -> HttpResponse:
    form = BillingDetailsForm(request.POST)
    if form.is_valid():
        try:
            invoicing.billing_details_set(
                organization=request.member.organization,  # type: ignore[attr-defined]
                legal_name=form.cleaned_data["legal_name"],
                address=form.cleaned_data["address"],
                tax_id=form.cleaned_data["tax_id"],
                actor=member_actor(request),
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, "Saved: invoices finalized from now on carry these details.")
            return redirect("portal:billing-details")
    return _page(request, form, status=400)
