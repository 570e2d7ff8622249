"""Requests in flight to the replicas of dedicated deployments: the autoscaler's load
(marketplace/workloads/autoscaling.py).

The gateway (marketplace/workloads/gateway.py) ``enter``s a request just before it
submits it to a replica's queue and ``leave``s it in a ``finally`` once it is done
with it (its last chunk read, its client gone, the node lost, the engine's refusal,
any exception), so a failed request never keeps counting. The matching loop's tick
reads the ``counts`` of every deployment at once. Every web process and the
matching loop must see the same numbers, so the count lives where the relay's
queues do (``INFERENCE_RELAY``), never in a process's memory (``make run``'s cache
is a per-process LocMemCache):

- ``RedisInflight`` (REDIS_URL set): a sorted set per deployment, one member per
  request scored by when it entered;
- ``DatabaseInflight`` (the embedded default): a row per request (InflightRequest).

A request, not a counter: leaving twice is harmless, and one whose process died
before its ``finally`` ran (killed, out of memory) stops counting after TTL_SECONDS,
the time after which the relay forgets a request nobody reads (relay.KEY_TTL_SECONDS),
instead of holding a replica up for ever.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from functools import lru_cache
from typing import Any, Protocol

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from marketplace.workloads.models import Deployment, InflightRequest
from marketplace.workloads.relay import KEY_TTL_SECONDS

TTL_SECONDS = KEY_TTL_SECONDS


class InflightStore(Protocol):
    def enter(self, *, dedicated_id: int, request_id: str) -> None:
        """The request is in flight to a replica of the deployment."""

    def leave(self, *, dedicated_id: int, request_id: str) -> None:
        """The request is done (idempotent)."""

    def counts(self, *, dedicated_ids: list[int]) -> dict[int, int]:
        """How many requests are in flight to each deployment's replicas now."""


class RedisInflight:
    def __init__(self, url: str) -> None:
        import redis

        self.redis: Any = redis.Redis.from_url(url, socket_timeout=5)

    @staticmethod
    def _key(dedicated_id: int) -> str:
        return f"tandem:inflight:{dedicated_id}"

    def enter(self, *, dedicated_id: int, request_id: str) -> None:
        key = self._key(dedicated_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {request_id: time.time()})
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()

    def leave(self, *, dedicated_id: int, request_id: str) -> None:
        self.redis.zrem(self._key(dedicated_id), request_id)

    def counts(self, *, dedicated_ids: list[int]) -> dict[int, int]:
        stale = time.time() - TTL_SECONDS
        pipe = self.redis.pipeline(transaction=False)
        for dedicated_id in dedicated_ids:
            pipe.zremrangebyscore(self._key(dedicated_id), "-inf", stale)
            pipe.zcard(self._key(dedicated_id))
        found = pipe.execute()
        return {d: int(found[2 * i + 1]) for i, d in enumerate(dedicated_ids)}


class DatabaseInflight:
    def enter(self, *, dedicated_id: int, request_id: str) -> None:
        InflightRequest.objects.bulk_create(
            [
                InflightRequest(
                    dedicated_id=dedicated_id, request_id=request_id, started_at=timezone.now()
                )
            ],
            ignore_conflicts=True,
        )

    def leave(self, *, dedicated_id: int, request_id: str) -> None:
        InflightRequest.objects.filter(dedicated_id=dedicated_id, request_id=request_id).delete()

    def counts(self, *, dedicated_ids: list[int]) -> dict[int, int]:
        rows = InflightRequest.objects.filter(dedicated_id__in=dedicated_ids)
        rows.filter(started_at__lt=timezone.now() - timedelta(seconds=TTL_SECONDS)).delete()
        found = dict(
            rows.values("dedicated_id")
            .annotate(n=Count("pk"))
            .values_list("dedicated_id", "n")
            .order_by()
        )
        return {d: int(found.get(d, 0)) for d in dedicated_ids}


_lock = threading.Lock()


@lru_cache(maxsize=4)
def _store_for(kind: str, url: str) -> InflightStore:
    if kind == "redis":
        return RedisInflight(url)
    return DatabaseInflight()


def inflight() -> InflightStore:
    """The configured store: beside the relay's queues (``INFERENCE_RELAY``)."""
    with _lock:
        return _store_for(settings.INFERENCE_RELAY, settings.REDIS_URL)


def request_enter(*, deployment: Deployment, request_id: str) -> None:
    """Count the request against its replica's dedicated deployment (others: nothing)."""
    if deployment.dedicated_id is not None:
        inflight().enter(dedicated_id=deployment.dedicated_id, request_id=request_id)


def request_leave(*, deployment: Deployment, request_id: str) -> None:
    if deployment.dedicated_id is not None:
        inflight().leave(dedicated_id=deployment.dedicated_id, request_id=request_id)


def inflight_counts(*, dedicated_ids: list[int]) -> dict[int, int]:
    return inflight().counts(dedicated_ids=dedicated_ids) if dedicated_ids else {}
