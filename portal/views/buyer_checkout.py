"""Checkout: a buyer adds prepaid credit by card through Stripe's Payment Element.

1. ``top_up``: the amount (a preset or another), then the PaymentIntent, made by
   billing.payments.services as ``POST /api/v1/billing/top-ups`` makes it, and the
   page that mounts Stripe's element (``portal/static/portal/checkout.js``; the
   publishable key and the client secret ride on data attributes, as no inline
   script may run). Only that page's Content-Security-Policy allows Stripe.js.
2. Stripe sends the buyer back to ``top_up_return`` (``return_url``), which waits,
   polling its ``top-up-status`` partial, until the signed webhook has credited the
   top-up. The page never credits anything on the browser's word: the webhook stays
   the only source of truth, and the page only reads.

Paying in is for admins and finance staff, as in the API.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from core.errors import ApplicationError, NotFound
from core.models import Membership
from core.tenancy import Caller
from ledger import selectors as books
from payments import selectors as payments
from payments import services as paying
from payments.models import TopUp
from payments.services import PaymentsUnavailable, stripe_configured
from portal.access import ADMIN, BUYER_KINDS, member_page
from portal.buyer_forms import TopUpForm
from portal.forms import add_service_error

PAYERS = (ADMIN, Membership.Role.FINANCE)
NOT_SET_UP = (
    "Card payments are not set up on this Tandem server yet: its operator has to "
    "configure Stripe (STRIPE_SECRET_KEY and STRIPE_PUBLISHABLE_KEY)."
)


def member_caller(request: HttpRequest) -> Caller:
    """The signed-in member as the services' ``Caller``. The console shows one
    organization's money, so its reads narrow the selectors' answers to the member's
    organization (the operator's finance staff would otherwise see every one)."""
    membership = request.member  # type: ignore[attr-defined]
    return Caller(
        organization=membership.organization, role=membership.role, user_id=request.user.pk
    )


def payments_ready() -> bool:
    return stripe_configured() and bool(settings.STRIPE_PUBLISHABLE_KEY and settings.STRIPE_JS_URL)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _allow_stripe(response: HttpResponse) -> HttpResponse:
    """Stripe.js on this page only: its script, the element's frames (Stripe's own
    origins) and its calls to Stripe's API."""
    origin = _origin(settings.STRIPE_JS_URL)
    response._csp_update = {  # type: ignore[attr-defined]  # read by django-csp
        "script-src": [origin],
        "frame-src": [origin, "https://hooks.stripe.com"],
        "connect-src": ["https://api.stripe.com"],
    }
    return response


@never_cache  # the pay page holds the PaymentIntent's client secret
@require_http_methods(["GET", "POST"])
@member_page(roles=PAYERS, kinds=BUYER_KINDS)
def top_up(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    currency = settings.TANDEM_CURRENCY
    form = TopUpForm(request.POST or None, currency=currency)
    context: dict[str, object] = {"form": form, "ready": payments_ready()}
    if request.method == "POST" and form.is_valid():
        amount = form.cleaned_data["amount_micros"]
        try:
            paying.top_up_check_amount(amount_micros=amount, currency=currency)
            paying.customer_ensure(organization=organization)  # unavailable before a row
            if not payments_ready():  # Stripe's keys without the page's publishable one
                raise PaymentsUnavailable(NOT_SET_UP)
            record = paying.top_up_record(
                organization=organization,
                amount_micros=amount,
                currency=currency,
                source=TopUp.Source.PAYMENT_ELEMENT,
                request_key=f"portal:{form.cleaned_data['request_key']}",
            )
            started = paying.top_up_submit(top_up=record)
        except PaymentsUnavailable as error:
            context.update(ready=False, unavailable=error.message)
            return render(request, "portal/buyer/top_up.html", context, status=503)
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            if started.top_up.status == TopUp.Status.SUCCEEDED:  # a resubmitted, paid form
                return _status_redirect(request, started.top_up)
            return_url = request.build_absolute_uri(
                reverse("portal:top-up-return", kwargs={"top_up_id": started.top_up.pk})
            )
            return _allow_stripe(
                render(
                    request,
                    "portal/buyer/pay.html",
                    {
                        "top_up": started.top_up,
                        "client_secret": started.client_secret,
                        "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
                        "stripe_js_url": settings.STRIPE_JS_URL,
                        "return_url": return_url,
                    },
                )
            )
    status = 400 if request.method == "POST" else 200
    return render(request, "portal/buyer/top_up.html", context, status=status)


def _status_redirect(request: HttpRequest, top_up: TopUp) -> HttpResponse:
    return redirect("portal:top-up-return", top_up_id=top_up.pk)


@never_cache
@require_http_methods(["GET"])
@member_page(kinds=BUYER_KINDS)
def top_up_return(request: HttpRequest, top_up_id: int) -> HttpResponse:
    """Where Stripe sends the buyer back (``?payment_intent=…&redirect_status=…``),
    and its ``top-up-status`` partial, polled by htmx until the webhook has settled
    the top-up. Any member may watch; another organization's top-up is a 404."""
    organization = request.member.organization  # type: ignore[attr-defined]
    found = (
        payments.top_ups_for_caller(caller=member_caller(request))
        .filter(organization=organization, pk=top_up_id)
        .first()
    )
    if found is None:
        raise NotFound(f"no top-up {top_up_id} in your organization")
    redirect_status = request.GET.get("redirect_status", "")
    failed = found.status in (TopUp.Status.FAILED, TopUp.Status.CANCELED) or (
        redirect_status == "failed" and found.status != TopUp.Status.SUCCEEDED
    )
    context = {
        "top_up": found,
        "failed": failed,
        "waiting": found.status != TopUp.Status.SUCCEEDED and not failed,
        "redirect_status": redirect_status,
        "overview": books.credit_overview(organization=organization, currency=found.currency)
        if found.status == TopUp.Status.SUCCEEDED
        else None,
    }
    template = "portal/buyer/top_up_return.html"
    if request.htmx:  # type: ignore[attr-defined]
        template += "#top-up-status"
    return render(request, template, context)
