"""The provider portal's supply pages: sites, nodes (with their GPUs, live telemetry,
health and reliability with its inputs) and agent keys. Every member of a provider
organization reads them; admins write, as in the API."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from core import services as tenancy_writes
from core.errors import ApplicationError
from portal.access import ADMIN, PROVIDER_KINDS, member_page
from portal.forms import add_service_error
from portal.provider_forms import AgentKeyCreateForm, SiteCreateForm
from portal.views.paging import page_of
from providers import selectors as supply
from providers import services as supply_writes

# How often the node page asks for fresh telemetry (agents report every 15 s at most).
TELEMETRY_POLL_SECONDS = 5


def _organization(request: HttpRequest):
    return request.member.organization  # type: ignore[attr-defined]


# --- sites --------------------------------------------------------------------


def _sites_page(request: HttpRequest, form: SiteCreateForm) -> HttpResponse:
    sites = supply.sites_for_org(organization=_organization(request)).order_by("name", "pk")
    return render(
        request,
        "portal/provider/sites.html",
        {"page": page_of(request, sites), "form": form},
    )


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def site_list(request: HttpRequest) -> HttpResponse:
    return _sites_page(request, SiteCreateForm())


@require_POST
@member_page(kinds=PROVIDER_KINDS, roles=[ADMIN])
def site_create(request: HttpRequest) -> HttpResponse:
    form = SiteCreateForm(request.POST)
    if form.is_valid():
        try:
            site = supply_writes.site_create(
                organization=_organization(request), **form.cleaned_data
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"Created the site “{site.name}” ({site.region}).")
            return redirect("portal:provider-sites")
    return _sites_page(request, form)  # the errors beside their fields, as sign-up does


# --- nodes --------------------------------------------------------------------


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def node_list(request: HttpRequest) -> HttpResponse:
    nodes = supply.nodes_for_org(organization=_organization(request)).order_by("hostname", "pk")
    return render(request, "portal/provider/nodes.html", {"page": page_of(request, nodes)})


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def node_detail(request: HttpRequest, node_id: int) -> HttpResponse:
    node = supply.node_get(organization=_organization(request), node_id=node_id)
    return render(
        request,
        "portal/provider/node.html",
        {
            "node": node,
            "reliability": supply.node_reliability(node=node),
            "poll_seconds": TELEMETRY_POLL_SECONDS,
        },
    )


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def node_telemetry(request: HttpRequest, node_id: int) -> HttpResponse:
    """The node page's live part (health and each GPU's latest sample), which the page
    polls; without JavaScript, reloading the page shows the same."""
    node = supply.node_get(organization=_organization(request), node_id=node_id)
    return render(
        request,
        "portal/provider/node.html#telemetry",
        {"node": node, "poll_seconds": TELEMETRY_POLL_SECONDS},
    )


# --- agent keys ---------------------------------------------------------------


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def agent_key_list(request: HttpRequest) -> HttpResponse:
    keys = (
        supply.agent_keys_for_org(organization=_organization(request))
        .select_related("node")
        .order_by("-created_at", "-pk")
    )
    return render(
        request,
        "portal/provider/agent_keys.html",
        {"page": page_of(request, keys), "form": AgentKeyCreateForm()},
    )


@never_cache  # the response that holds a new key must not be stored anywhere
@require_POST
@member_page(kinds=PROVIDER_KINDS, roles=[ADMIN])
def agent_key_create(request: HttpRequest) -> HttpResponse:
    """A valid POST answers with the key itself and the command that runs the agent
    with it: never stored, so never shown again."""
    form = AgentKeyCreateForm(request.POST)
    if form.is_valid():
        try:
            created = supply_writes.agent_key_create(
                organization=_organization(request), name=form.cleaned_data["name"]
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            return render(
                request,
                "portal/provider/agent_key_created.html",
                {"created": created, "server": request.build_absolute_uri("/").rstrip("/")},
            )
    keys = supply.agent_keys_for_org(organization=_organization(request)).select_related("node")
    return render(
        request,
        "portal/provider/agent_keys.html",
        {"page": page_of(request, keys.order_by("-created_at", "-pk")), "form": form},
    )


@require_POST
@member_page(kinds=PROVIDER_KINDS, roles=[ADMIN])
def agent_key_revoke(request: HttpRequest, agent_key_id: int) -> HttpResponse:
    agent_key = supply.agent_key_get(organization=_organization(request), agent_key_id=agent_key_id)
    tenancy_writes.api_key_revoke(api_key=agent_key.api_key)
    messages.success(
        request,
        f"Revoked the agent key “{agent_key.name}” ({agent_key.api_key.prefix}): "
        "its node's agent is refused from now on.",
    )
    return redirect("portal:provider-agent-keys")
