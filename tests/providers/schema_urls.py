"""Only the supply side's URLs: its schema is checked on its own, so warnings from
other apps do not hide (or cause) ours."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("api/v1/provider/", include("providers.urls")),
    path("api/v1/agent/", include("providers.agent_urls")),
]
