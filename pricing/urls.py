"""The price book's routes under /api/v1/ (config/urls.py)."""

from __future__ import annotations

from django.urls import path

from core.routing import by_method
from pricing.apis import (
    FineTuneEstimateApi,
    PricePublicListApi,
    PriceScheduleCreateApi,
    PriceScheduleListApi,
)

urlpatterns = [
    path("prices/", PricePublicListApi.as_view(), name="prices"),
    path(
        "prices/schedule",
        by_method(get=PriceScheduleListApi, post=PriceScheduleCreateApi),
        name="prices-schedule",
    ),
    path("prices/fine-tune-estimate", FineTuneEstimateApi.as_view(), name="fine-tune-estimate"),
]
