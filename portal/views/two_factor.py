"""Two-factor sign-in (core.two_factor), optional per person.

Signing in with it on takes two steps: the password (``SignInView``), which does not
sign the person in but remembers in the session who passed it, for a few minutes;
then a code from their authenticator app or a backup code (``sign_in_code``), after
which they are signed in. Until then the session is not signed in at all, so no
page and no API call made with it sees a person who has given only a password.

The person's own page (``two_factor``) turns it on (scan or type the secret, confirm
with a code, keep the backup codes shown once), makes new backup codes and turns it
off, each with a current code.
"""

from __future__ import annotations

import time
from typing import Any

import segno
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from core import selectors as people
from core import services as tenancy
from core.errors import ApplicationError
from portal.access import member_page
from portal.forms import SignInForm, TwoFactorCodeForm, add_service_error

PENDING_SESSION_KEY = "portal_two_factor_pending"
PENDING_SECONDS = 300  # the password step is good this long


class SignInView(LoginView):
    template_name = "portal/auth/sign_in.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True

    def form_valid(self, form: SignInForm) -> HttpResponse:  # type: ignore[override]
        user = form.get_user()
        if not people.two_factor_enabled(user=user):
            return super().form_valid(form)
        self.request.session.cycle_key()
        self.request.session[PENDING_SESSION_KEY] = {
            "user": user.pk,
            "backend": getattr(user, "backend", ""),
            "next": self.get_success_url(),
            "until": time.time() + PENDING_SECONDS,
        }
        return redirect("portal:sign-in-code")


def _pending_user(request: HttpRequest) -> tuple[Any, dict[str, Any]] | None:
    pending = request.session.get(PENDING_SESSION_KEY)
    if not isinstance(pending, dict) or pending.get("until", 0) < time.time():
        request.session.pop(PENDING_SESSION_KEY, None)
        return None
    user = get_user_model().objects.filter(pk=pending["user"], is_active=True).first()
    return (user, pending) if user is not None else None


@never_cache
@require_http_methods(["GET", "POST"])
def sign_in_code(request: HttpRequest) -> HttpResponseBase:
    found = _pending_user(request)
    if found is None:
        messages.info(request, "Sign in with your email and password first.")
        return redirect("portal:sign-in")
    user, pending = found
    form = TwoFactorCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            tenancy.two_factor_verify(user=user, code=form.cleaned_data["code"])
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            request.session.pop(PENDING_SESSION_KEY, None)
            login(request, user, backend=pending["backend"] or None)
            return redirect(pending["next"])
    status = 400 if form.errors else 200
    return render(request, "portal/auth/sign_in_code.html", {"form": form}, status=status)


def _codes_page(request: HttpRequest, codes: list[str]) -> HttpResponse:
    response = render(request, "portal/everyone/backup_codes.html", {"codes": codes})
    response["Cache-Control"] = "no-store"  # shown once: never from a cache
    return response


OFF, RENEW = "off", "renew"  # the page's two code forms, told apart by prefix


def _status_page(request: HttpRequest, bound: TwoFactorCodeForm | None = None) -> HttpResponse:
    forms = {prefix: TwoFactorCodeForm(prefix=prefix) for prefix in (OFF, RENEW)}
    if bound is not None:
        forms[bound.prefix or OFF] = bound
    context = {
        "status": people.two_factor_status(user=request.user),
        "off_form": forms[OFF],
        "renew_form": forms[RENEW],
    }
    return render(request, "portal/everyone/two_factor.html", context, status=400 if bound else 200)


@require_http_methods(["GET"])
@member_page()
def two_factor(request: HttpRequest) -> HttpResponse:
    return _status_page(request)


def _setup_page(request: HttpRequest, form: TwoFactorCodeForm, *, status: int = 200):
    device = tenancy.two_factor_setup_start(user=request.user)
    uri = device.config_url
    secret = uri.split("secret=", 1)[1].split("&", 1)[0]
    qr = segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff", svgclass="qr")
    return render(
        request,
        "portal/everyone/two_factor_setup.html",
        {"form": form, "qr": qr, "uri": uri, "secret": secret},
        status=status,
    )


@never_cache
@require_http_methods(["GET", "POST"])
@member_page()
def two_factor_setup(request: HttpRequest) -> HttpResponse:
    if people.two_factor_enabled(user=request.user):
        messages.info(request, "Two-factor sign-in is already on.")
        return redirect("portal:two-factor")
    form = TwoFactorCodeForm(request.POST or None, setting_up=True)
    if request.method == "POST" and form.is_valid():
        try:
            codes = tenancy.two_factor_setup_confirm(
                user=request.user, code=form.cleaned_data["code"]
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, "Two-factor sign-in is on.")
            return _codes_page(request, codes)
    return _setup_page(request, form, status=400 if form.errors else 200)


@require_POST
@member_page()
def two_factor_disable(request: HttpRequest) -> HttpResponse:
    form = TwoFactorCodeForm(request.POST, prefix=OFF)
    if form.is_valid():
        try:
            tenancy.two_factor_disable(user=request.user, code=form.cleaned_data["code"])
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(
                request, "Two-factor sign-in is off: your password alone signs you in."
            )
            return redirect("portal:two-factor")
    return _status_page(request, form)


@require_POST
@member_page()
def two_factor_backup_codes(request: HttpRequest) -> HttpResponse:
    form = TwoFactorCodeForm(request.POST, prefix=RENEW)
    if form.is_valid():
        try:
            codes = tenancy.two_factor_backup_codes_renew(
                user=request.user, code=form.cleaned_data["code"]
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            return _codes_page(request, codes)
    return _status_page(request, form)
