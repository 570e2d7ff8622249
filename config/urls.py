from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.apis import healthz
from marketplace.together import urls as together_urls

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # First: every node's agent calls these every few seconds; the other prefixes
    # never match them, so resolving them first changes nothing but the cost.
    path("api/v1/agent/", include("providers.agent_urls")),
    # The node protocol (leased work): marketplace owns it, providers cannot import it.
    path("api/v1/agent/", include("marketplace.assignments.agent_urls")),
    # The inference relay's node side (a serve assignment's requests and replies).
    path("api/v1/agent/", include("marketplace.workloads.agent_urls")),
    path("api/v1/", include("core.urls")),
    path("api/v1/", include("ledger.urls")),
    path("api/v1/", include("pricing.urls")),
    path("api/v1/", include("invoicing.urls")),
    path("api/v1/", include("payments.urls")),
    path("api/v1/finance/", include("exports.urls")),
    path("api/v1/", include("marketplace.urls")),
    path("api/v1/", include("marketplace.assignments.urls")),
    path("api/v1/usage/", include("metering.urls")),
    path("api/v1/provider/", include("providers.urls")),
    # OpenAI- and Together-compatible surface: their clients call /v1/... directly.
    path("v1/", include("marketplace.workloads.urls")),
    # Together's platform: clusters, usage (v1), projects and discovery (v2, v3).
    path("v1/", include((together_urls.v1, "together"), namespace="together-v1")),
    path("v2/", include((together_urls.v2, "together"), namespace="together-v2")),
    path("v3/", include((together_urls.v3, "together"), namespace="together-v3")),
    # The portal's pages for people (sign-in at /, the buyer console, the provider
    # portal): server-rendered, on the same services as the API.
    path("", include("portal.urls")),
]

# Errors no view answers (no route, a crash, a bad Host): JSON under /api/ and /v1/,
# each in its surface's shape; HTML elsewhere (config/handlers.py).
handler400 = "config.handlers.bad_request"
handler403 = "config.handlers.permission_denied"
handler404 = "config.handlers.page_not_found"
handler500 = "config.handlers.server_error"
