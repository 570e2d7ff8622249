"""Sign-up, and the home that sends each member to their part of the portal.
Sign-in, sign-out and password reset are Django's own views (portal.urls)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core import services as tenancy
from core.errors import ApplicationError
from core.models import Membership
from portal.access import (
    BUYER_KINDS,
    ORGANIZATION_SESSION_KEY,
    PROVIDER_KINDS,
    current_membership,
    member_page,
)
from portal.forms import OrganizationSwitchForm, SignUpForm, add_service_error


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
def home(request: HttpRequest) -> HttpResponseBase:
    """``/``: the sign-in page for visitors; a member's own part of the portal."""
    if not request.user.is_authenticated:
        return redirect("portal:sign-in")
    membership = current_membership(request)
    if membership is not None:
        organization = membership.organization
        finance_staff = organization.is_operator and membership.role == Membership.Role.FINANCE
        if finance_staff:
            return redirect("portal:finance")
        if organization.kind in BUYER_KINDS:
            return redirect("portal:console")
        if organization.kind in PROVIDER_KINDS:
            return redirect("portal:provider")
    return overview(request)


@member_page()
def overview(request: HttpRequest) -> HttpResponse:
    """The home of a member with no dashboard of their organization's kind."""
    return render(request, "portal/everyone/home.html")


@require_POST
@member_page()
def organization_switch(request: HttpRequest) -> HttpResponse:
    """Make another of the person's organizations the session's own: every page then
    reads and writes in it. Only organizations they are a member of are choices, so
    another one's id is refused like any bad choice."""
    form = OrganizationSwitchForm(
        request.POST,
        memberships=request.memberships,  # type: ignore[attr-defined]
    )
    if not form.is_valid():
        messages.error(request, " ".join(str(e) for e in form.errors.get("organization", [])))
        return redirect("portal:home")
    membership = form.cleaned_data["organization"]
    request.session[ORGANIZATION_SESSION_KEY] = membership.organization_id
    messages.success(
        request, f"Now working in {membership.organization.name} as {membership.role}."
    )
    return redirect("portal:home")
