"""The provider portal: /api/v1/provider/..."""

from __future__ import annotations

from django.urls import path

from core.routing import by_method
from providers import apis

urlpatterns = [
    path("sites/", by_method(get=apis.SiteListApi, post=apis.SiteCreateApi), name="provider-sites"),
    path("sites/<id:site_id>", apis.SiteDetailApi.as_view(), name="provider-site-detail"),
    path("nodes/", apis.NodeListApi.as_view(), name="provider-nodes"),
    path("nodes/<id:node_id>", apis.NodeDetailApi.as_view(), name="provider-node-detail"),
    path(
        "nodes/<id:node_id>/telemetry",
        apis.NodeTelemetryApi.as_view(),
        name="provider-node-telemetry",
    ),
    path(
        "offers/",
        by_method(get=apis.OfferListApi, post=apis.OfferCreateApi),
        name="provider-offers",
    ),
    path("offers/<id:offer_id>", apis.OfferDetailApi.as_view(), name="provider-offer-detail"),
    path("offers/<id:offer_id>/pause", apis.OfferPauseApi.as_view(), name="provider-offer-pause"),
    path(
        "offers/<id:offer_id>/resume", apis.OfferResumeApi.as_view(), name="provider-offer-resume"
    ),
    path(
        "offers/<id:offer_id>/reprice",
        apis.OfferRepriceApi.as_view(),
        name="provider-offer-reprice",
    ),
    path(
        "offers/<id:offer_id>/withdraw",
        apis.OfferWithdrawApi.as_view(),
        name="provider-offer-withdraw",
    ),
    path("utilization", apis.UtilizationApi.as_view(), name="provider-utilization"),
    path("reliability", apis.ProviderReliabilityApi.as_view(), name="provider-reliability"),
    path("gpu-models", apis.GpuModelListApi.as_view(), name="provider-gpu-models"),
    path(
        "agent-keys/",
        by_method(get=apis.AgentKeyListApi, post=apis.AgentKeyCreateApi),
        name="provider-agent-keys",
    ),
]
