"""Requests per minute per API key (or portal user), counted in the cache (Redis).

A fixed one-minute window counted with one atomic INCR per request. DRF's
``SimpleRateThrottle`` reads a history list, appends and writes it back, so
concurrent requests overwrite each other's entries and more than the limit get
through; INCR cannot lose a count. The price of a fixed window is that a client may
spend a whole minute's allowance at the end of one window and again at the start of
the next; that is acceptable for abuse protection, which is all this is for.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)


def _redis_client(key: str) -> Any:
    """The raw redis client behind Django's cache, or None for another backend.

    Django's ``get_client()`` builds a new client (and its table of reply parsers)
    on every call, which costs more than the round trip; writes always go to the
    first server's pool, so one client per cache backend serves every count."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return None
    cache_client = backend._cache
    client = getattr(cache_client, "_rate_limit_client", None)
    if client is None:
        client = cache_client.get_client(key, write=True)
        cache_client._rate_limit_client = client  # type: ignore[attr-defined]
    return client


class ApiKeyRateThrottle(BaseThrottle):
    """``settings.API_RATE_LIMIT_PER_MINUTE`` requests per minute per caller."""

    window_seconds = 60
    timer = staticmethod(time.time)

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        caller = getattr(request, "caller", None)
        if caller is None:
            return True  # unauthenticated requests are refused before any work is done
        now = self.timer()
        window = int(now // self.window_seconds)
        key = f"throttle:{caller.rate_limit_key}:{window}"
        try:
            count = self._count(key)
        except Exception:
            # The limit protects the service; it must not take it down with the cache.
            logger.warning(
                "rate limit counter unavailable; letting the request through", exc_info=True
            )
            return True
        if count <= settings.API_RATE_LIMIT_PER_MINUTE:
            return True
        self._wait = (window + 1) * self.window_seconds - now
        return False

    def _count(self, key: str) -> int:
        # Outlives its window, so the key never expires between the increment and the
        # next request of the same window.
        timeout = self.window_seconds * 2
        client = _redis_client(key)
        if client is not None:
            # One round trip: INCR creates the counter at 1; EXPIRE NX sets its life
            # only when it has none, so later requests never extend it.
            pipe = client.pipeline(transaction=False)
            pipe.incr(cache.make_and_validate_key(key))
            pipe.expire(cache.make_and_validate_key(key), timeout, nx=True)
            count, _ = pipe.execute()
            return int(count)
        cache.add(key, 0, timeout=timeout)
        try:
            return cache.incr(key)
        except ValueError:  # evicted under memory pressure after add(): start again
            cache.add(key, 1, timeout=timeout)
            return 1

    def wait(self) -> float | None:
        return self._wait
