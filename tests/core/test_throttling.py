from __future__ import annotations

import threading

import pytest
from django.db import connections
from rest_framework.test import APIClient

from core.throttling import ApiKeyRateThrottle

# Inside one minute's window, far from its edge, so no test straddles two windows.
NOW = 1_800_000_000 + 20.25


@pytest.fixture
def frozen_clock(monkeypatch):
    monkeypatch.setattr(ApiKeyRateThrottle, "timer", staticmethod(lambda: NOW))


def test_over_the_limit_is_429_with_retry_after(cast, settings, frozen_clock):
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    client = cast.client(cast.buyer_a)

    statuses = [client.get("/api/v1/organization").status_code for _ in range(3)]
    response = client.get("/api/v1/organization")

    assert statuses == [200, 200, 200]
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    # The window ends 39.75 s after NOW: waiting that long (rounded up) must suffice.
    # (core.errors adds 1 to DRF's already rounded-up wait, hence 41 rather than 40.)
    assert 40 <= int(response["Retry-After"]) <= 41


def test_the_limit_is_per_api_key(cast, settings, frozen_clock):
    settings.API_RATE_LIMIT_PER_MINUTE = 2
    first, second = cast.client(cast.buyer_a), cast.client(cast.buyer_a)
    for _ in range(2):
        first.get("/api/v1/organization")

    assert first.get("/api/v1/organization").status_code == 429
    assert second.get("/api/v1/organization").status_code == 200


def test_the_next_window_starts_afresh(cast, settings, monkeypatch):
    settings.API_RATE_LIMIT_PER_MINUTE = 1
    client = cast.client(cast.buyer_a)
    clock = [NOW]
    monkeypatch.setattr(ApiKeyRateThrottle, "timer", staticmethod(lambda: clock[0]))
    client.get("/api/v1/organization")
    assert client.get("/api/v1/organization").status_code == 429

    clock[0] = NOW + 60

    assert client.get("/api/v1/organization").status_code == 200


def test_the_limit_fails_open_when_the_cache_is_down(cast, settings, frozen_clock, monkeypatch):
    settings.API_RATE_LIMIT_PER_MINUTE = 1
    client = cast.client(cast.buyer_a)

    def broken(self, key):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(ApiKeyRateThrottle, "_count", broken)

    assert [client.get("/api/v1/organization").status_code for _ in range(3)] == [200] * 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_never_exceed_the_limit(cast, settings, frozen_clock):
    settings.API_RATE_LIMIT_PER_MINUTE = 10
    raw_key = cast.client(cast.buyer_a).raw_key
    threads_n = 25
    barrier = threading.Barrier(threads_n)
    statuses: list[int] = []

    def send():
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
            barrier.wait()
            statuses.append(client.get("/api/v1/organization").status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [200] * 10 + [429] * 15
