"""Auto-recharge: below a threshold, charge the saved payment method a set amount, at
most a daily cap (billing.payments' ``auto_recharge`` follower does the charging).
Every member sees the setting and the saved method; admins and finance staff change
it. The page warns when one recharge would not last an hour at the current burn
(billing.selectors.credit_overview's last 24 hours)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core.errors import ApplicationError
from core.money import Money
from ledger import selectors as books
from payments import selectors as payments
from payments import services as paying
from portal.access import BUYER_KINDS, member_page
from portal.buyer_forms import AutoRechargeForm
from portal.forms import add_service_error
from portal.views.buyer_checkout import PAYERS

HOURS_PER_BURN_WINDOW = 24  # credit_overview's burn is the last 24 hours'


def _page(request: HttpRequest, form: AutoRechargeForm, *, status: int = 200) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    currency = settings.TANDEM_CURRENCY
    setting = payments.auto_recharge_for(organization=organization)
    overview = books.credit_overview(organization=organization, currency=currency)
    hourly_burn = overview.burn_micros // HOURS_PER_BURN_WINDOW
    amount = setting.amount_micros if setting is not None else None
    return render(
        request,
        "portal/buyer/auto_recharge.html",
        {
            "form": form,
            "setting": setting,
            "customer": payments.customer_for(organization=organization),
            "overview": overview,
            "hourly_burn": hourly_burn,
            "below_an_hour": amount is not None and hourly_burn > 0 and amount < hourly_burn,
            "can_change": request.member.role in PAYERS,  # type: ignore[attr-defined]
        },
        status=status,
    )


@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def auto_recharge(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    currency = settings.TANDEM_CURRENCY
    setting = payments.auto_recharge_for(organization=organization)
    if setting is not None:
        initial = {
            "enabled": setting.enabled,
            "threshold": Money(setting.threshold_micros, setting.currency).format(),
            "amount": Money(setting.amount_micros, setting.currency).format(),
            "daily_cap": Money(setting.daily_cap_micros, setting.currency).format(),
        }
    else:
        initial = {"enabled": False, "threshold": "10.00", "amount": "50.00", "daily_cap": "200.00"}
    return _page(request, AutoRechargeForm(initial=initial, currency=currency))


@require_POST
@member_page(roles=PAYERS, kinds=BUYER_KINDS)
def auto_recharge_change(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    currency = settings.TANDEM_CURRENCY
    form = AutoRechargeForm(request.POST, currency=currency)
    if form.is_valid():
        try:
            setting = paying.auto_recharge_set(
                organization=organization,
                enabled=form.cleaned_data["enabled"],
                threshold_micros=form.cleaned_data["threshold"],
                amount_micros=form.cleaned_data["amount"],
                daily_cap_micros=form.cleaned_data["daily_cap"],
                currency=currency,
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            state = "on" if setting.enabled else "off"
            messages.success(request, f"Saved: auto-recharge is {state}.")
            return redirect("portal:auto-recharge")
    return _page(request, form, status=400)
