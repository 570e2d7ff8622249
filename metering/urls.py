from __future__ import annotations

from django.urls import path

from metering.apis import GpuSecondsDeliveredApi, UsageBatchApi, UsageEventListApi, UsageMeterApi

urlpatterns = [
    path("batch", UsageBatchApi.as_view(), name="usage-batch"),
    path("events/", UsageEventListApi.as_view(), name="usage-events"),
    path("meter", UsageMeterApi.as_view(), name="usage-meter"),
    path("delivered", GpuSecondsDeliveredApi.as_view(), name="usage-delivered"),
]
