from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Per API key (or portal user) requests per minute, counted in the cache (Redis)."""

    scope = "api_key"

    def get_rate(self) -> str:
        return f"{settings.API_RATE_LIMIT_PER_MINUTE}/min"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        caller = getattr(request, "caller", None)
        if caller is None:
            return None
        return f"throttle:{caller.rate_limit_key}"
