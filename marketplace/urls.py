"""The order book: /api/v1/orders/, /api/v1/leases/, /api/v1/market/ and the
provider's /api/v1/provider-leases/."""

from __future__ import annotations

from django.urls import path

from core.routing import by_method
from marketplace import apis

urlpatterns = [
    path("orders/", by_method(get=apis.OrderListApi, post=apis.OrderPlaceApi), name="orders"),
    path("orders/<id:order_id>", apis.OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<id:order_id>/cancel", apis.OrderCancelApi.as_view(), name="order-cancel"),
    path("leases/", apis.LeaseListApi.as_view(), name="leases"),
    path("leases/<id:lease_id>", apis.LeaseDetailApi.as_view(), name="lease-detail"),
    path("provider-leases/", apis.ProviderLeaseListApi.as_view(), name="provider-leases"),
    path("market/", apis.MarketApi.as_view(), name="market"),
]
