"""API keys: the list, create (the key shown this once), revoke. Everyone in the
organization sees the list; only admins create and revoke (as in the API)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from core import selectors as tenancy
from core import services as tenancy_writes
from core.errors import ApplicationError
from portal.access import ADMIN, member_page
from portal.forms import ApiKeyCreateForm, add_service_error
from portal.views.paging import page_of


@require_http_methods(["GET"])
@member_page()
def key_list(request: HttpRequest) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    keys = tenancy.api_keys_for_org(organization=organization).order_by("-created_at", "-pk")
    return render(
        request,
        "portal/everyone/keys.html",
        {"page": page_of(request, keys), "form": ApiKeyCreateForm()},
    )


@never_cache  # the response that holds a new key must not be stored anywhere
@require_http_methods(["GET", "POST"])
@member_page(roles=[ADMIN])
def key_create(request: HttpRequest) -> HttpResponse:
    """The form (a page of its own without JavaScript, a dialog on the list with it);
    a valid POST answers with the key itself, never stored, so never shown again."""
    template = "portal/everyone/key_new.html"
    if request.htmx:  # type: ignore[attr-defined]
        template += "#key-dialog-body"
    form = ApiKeyCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            created = tenancy_writes.api_key_create(
                organization=request.member.organization,  # type: ignore[attr-defined]
                name=form.cleaned_data["name"],
                role=form.cleaned_data["role"],
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            return render(request, template, {"created": created})
    return render(request, template, {"form": form})


@require_POST
@member_page(roles=[ADMIN])
def key_revoke(request: HttpRequest, api_key_id: int) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    api_key = tenancy.api_key_get(organization=organization, api_key_id=api_key_id)
    tenancy_writes.api_key_revoke(api_key=api_key)
    messages.success(request, f"Revoked the key “{api_key.name}” ({api_key.prefix}).")
    return redirect("portal:keys")
