"""Sign-up, and the home that sends each member to their part of the portal.
Sign-in, sign-out and password reset are Django's own views (portal.urls)."""

from __future__ import annotations

from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from core import services as tenancy
from core.errors import ApplicationError
from core.models import Membership
from portal.access import BUYER_KINDS, PROVIDER_KINDS, current_membership, member_page
from portal.forms import SignUpForm, add_service_error


@require_http_methods(["GET", "POST"])
def sign_up(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("portal:home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            membership = tenancy.org_sign_up(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                organization_name=form.cleaned_data["organization_name"],
                kind=form.cleaned_data["kind"],
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("portal:home")
    return render(request, "portal/auth/sign_up.html", {"form": form})


@require_http_methods(["GET"])
def home(request: HttpRequest) -> HttpResponse:
    """``/``: the sign-in page for visitors; a member's own part of the portal."""
    if not request.user.is_authenticated:
        return redirect("portal:sign-in")
    membership = current_membership(request)
    if membership is not None:
        organization = membership.organization
        finance_staff = organization.is_operator and membership.role == Membership.Role.FINANCE
        if organization.kind in BUYER_KINDS and not finance_staff:
            return redirect("portal:console")
        if organization.kind in PROVIDER_KINDS and not finance_staff:
            return redirect("portal:provider")
    return overview(request)


@member_page()
def overview(request: HttpRequest) -> HttpResponse:
    """The home of a member with no dashboard yet (the operator's finance staff)."""
    return render(request, "portal/everyone/home.html")
