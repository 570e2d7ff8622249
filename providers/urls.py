"""The provider portal: /api/v1/provider/..."""

from __future__ import annotations

from django.urls import path

from core.routing import by_method
from providers.apis import agent_keys, nodes, offers, overview, sites

urlpatterns = [
    path(
        "sites/",
        by_method(get=sites.SiteListApi, post=sites.SiteCreateApi),
        name="provider-sites",
    ),
    path("sites/<id:site_id>", sites.SiteDetailApi.as_view(), name="provider-site-detail"),
    path("nodes/", nodes.NodeListApi.as_view(), name="provider-nodes"),
    path("nodes/<id:node_id>", nodes.NodeDetailApi.as_view(), name="provider-node-detail"),
    path(
        "nodes/<id:node_id>/telemetry",
        nodes.NodeTelemetryApi.as_view(),
        name="provider-node-telemetry",
    ),
    path(
        "offers/",
        by_method(get=offers.OfferListApi, post=offers.OfferCreateApi),
        name="provider-offers",
    ),
    path("offers/<id:offer_id>", offers.OfferDetailApi.as_view(), name="provider-offer-detail"),
    path("offers/<id:offer_id>/pause", offers.OfferPauseApi.as_view(), name="provider-offer-pause"),
    path(
        "offers/<id:offer_id>/resume", offers.OfferResumeApi.as_view(), name="provider-offer-resume"
    ),
    path(
        "offers/<id:offer_id>/reprice",
        offers.OfferRepriceApi.as_view(),
        name="provider-offer-reprice",
    ),
    path(
        "offers/<id:offer_id>/withdraw",
        offers.OfferWithdrawApi.as_view(),
        name="provider-offer-withdraw",
    ),
    path("utilization", overview.UtilizationApi.as_view(), name="provider-utilization"),
    path("reliability", overview.ProviderReliabilityApi.as_view(), name="provider-reliability"),
    path("gpu-models", overview.GpuModelListApi.as_view(), name="provider-gpu-models"),
    path(
        "agent-keys/",
        by_method(get=agent_keys.AgentKeyListApi, post=agent_keys.AgentKeyCreateApi),
        name="provider-agent-keys",
    ),
]
