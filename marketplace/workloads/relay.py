"""The inference relay's queues: how a request reaches the node that serves its
deployment, and how the node's replies come back, over the node's outbound HTTP
only (so a node behind NAT serves).

The gateway (marketplace/workloads/inference.py) ``submit``s a request to its
deployment's queue and reads its ``replies``; the node's agent, through the agent
API (marketplace/workloads/relay_apis.py), ``take``s batches of requests and posts
their replies (``reply``). One small interface, two stores:

- ``RedisRelay`` (REDIS_URL set): a list per deployment (``RPUSH`` / ``BLPOP`` then
  ``LPOP count``: whatever waits is taken as one batch), a list of replies per
  request, and a key per request that says the gateway still wants it.
- ``DatabaseRelay`` (the embedded default): a table of waiting requests claimed
  with ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL (concurrent takers never
  block on, or take, the same rows) and with a conditional update on SQLite (``WHERE
  taken_at IS NULL``: the row count says who won); a table of replies. Waits poll.

A request the gateway gave up on (its client left, its node was lost) is
``forget``-ten: a node that takes it later finds it gone, and its replies to it are
dropped; ``reply`` answers the ids that are gone, so the node stops generating them.
Replies are only accepted for requests of the replying node's own deployment.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from functools import lru_cache
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.db import is_postgres
from marketplace.workloads.models import RelayReply, RelayRequest

# A request the gateway no longer reads expires from Redis after this long.
KEY_TTL_SECONDS = 600
MAX_TAKE = 64
SOCKET_TIMEOUT_SECONDS = 60


class RelayQueue(Protocol):
    def submit(self, *, deployment_id: str, request_id: str, payload: dict[str, Any]) -> None:
        """Queue ``payload`` (it carries ``id`` = ``request_id``) for the deployment."""

    def take(self, *, deployment_id: str, limit: int, wait: float) -> list[dict[str, Any]]:
        """Up to ``limit`` waiting requests of the deployment, oldest first, each taken
        once; waits up to ``wait`` seconds for the first."""

    def reply(self, *, deployment_id: str, replies: list[dict[str, Any]]) -> list[str]:
        """Store replies (each names its ``request``) of requests of the deployment;
        replies to requests that are gone are dropped. Answers the gone ids."""

    def replies(self, *, deployment_id: str, request_id: str, wait: float) -> list[dict[str, Any]]:
        """The request's replies not read yet, in order; waits up to ``wait`` seconds
        for the first."""

    def forget(self, *, deployment_id: str, request_id: str) -> None:
        """The gateway is done with the request: it and its replies go."""


# --- Redis --------------------------------------------------------------------------


class RedisRelay:
    def __init__(self, url: str) -> None:
        import redis

        # Long polls block in BLPOP for up to a take's wait (25 s at most): the read
        # timeout must be above it (redis-py's default is 5 s).
        self.redis: Any = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_SECONDS)

    @staticmethod
    def _queue(deployment_id: str) -> str:
        return f"tandem:relay:{deployment_id}:queue"

    @staticmethod
    def _live(deployment_id: str, request_id: str) -> str:
        return f"tandem:relay:{deployment_id}:live:{request_id}"

    @staticmethod
    def _replies(deployment_id: str, request_id: str) -> str:
        return f"tandem:relay:{deployment_id}:replies:{request_id}"

    def submit(self, *, deployment_id: str, request_id: str, payload: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._live(deployment_id, request_id), b"1", ex=KEY_TTL_SECONDS)
        pipe.rpush(self._queue(deployment_id), json.dumps(payload))
        pipe.execute()

    def take(self, *, deployment_id: str, limit: int, wait: float) -> list[dict[str, Any]]:
        queue = self._queue(deployment_id)
        limit = max(1, min(limit, MAX_TAKE))
        raw: list[bytes] = []
        first = self.redis.lpop(queue) if wait <= 0 else None
        if first is None and wait > 0:
            popped = self.redis.blpop([queue], timeout=wait)
            first = popped[1] if popped else None
        if first is None:
            return []
        raw.append(first)
        if limit > 1:
            raw += self.redis.lpop(queue, limit - 1) or []
        items = [json.loads(item) for item in raw]
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            pipe.exists(self._live(deployment_id, str(item["id"])))
        live = pipe.execute()
        return [item for item, alive in zip(items, live, strict=True) if alive]

    def reply(self, *, deployment_id: str, replies: list[dict[str, Any]]) -> list[str]:
        ids = sorted({str(item["request"]) for item in replies})
        pipe = self.redis.pipeline(transaction=False)
        for request_id in ids:
            pipe.exists(self._live(deployment_id, request_id))
        alive = {request_id for request_id, found in zip(ids, pipe.execute(), strict=True) if found}
        pipe = self.redis.pipeline(transaction=False)
        for item in replies:
            request_id = str(item["request"])
            if request_id in alive:
                key = self._replies(deployment_id, request_id)
                pipe.rpush(key, json.dumps(item))
        for request_id in alive:
            pipe.expire(self._replies(deployment_id, request_id), KEY_TTL_SECONDS)
        pipe.execute()
        return [request_id for request_id in ids if request_id not in alive]

    def replies(self, *, deployment_id: str, request_id: str, wait: float) -> list[dict[str, Any]]:
        key = self._replies(deployment_id, request_id)
        found = self.redis.lpop(key, MAX_TAKE)
        if not found and wait > 0:
            popped = self.redis.blpop([key], timeout=wait)
            if not popped:
                return []
            found = [popped[1], *(self.redis.lpop(key, MAX_TAKE) or [])]
        return [json.loads(item) for item in found or []]

    def forget(self, *, deployment_id: str, request_id: str) -> None:
        self.redis.delete(
            self._live(deployment_id, request_id), self._replies(deployment_id, request_id)
        )


# --- the database -------------------------------------------------------------------

# How often a wait re-reads its table: a waiting request or reply is seen within it.
POLL_SECONDS = 0.01
POLL_MAX_SECONDS = 0.05


def _poll(read: Any, wait: float) -> Any:
    deadline = time.monotonic() + max(wait, 0.0)
    pause = POLL_SECONDS
    while True:
        found = read()
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
        pause = min(pause * 1.5, POLL_MAX_SECONDS)


class DatabaseRelay:
    def submit(self, *, deployment_id: str, request_id: str, payload: dict[str, Any]) -> None:
        RelayRequest.objects.create(
            deployment_id=deployment_id,
            request_id=request_id,
            payload=payload,
            created_at=timezone.now(),
        )

    def _take_once(self, deployment_id: str, limit: int) -> list[dict[str, Any]]:
        waiting = RelayRequest.objects.filter(deployment_id=deployment_id, taken_at=None)
        now = timezone.now()
        if is_postgres():
            with transaction.atomic():
                rows = list(
                    waiting.select_for_update(skip_locked=True)
                    .order_by("pk")
                    .values_list("pk", "payload")[:limit]
                )
                if rows:
                    RelayRequest.objects.filter(pk__in=[pk for pk, _ in rows]).update(taken_at=now)
            return [payload for _, payload in rows]
        # SQLite: one writer at a time; the conditional update is the claim, and the
        # taker's token says which rows it won.
        token = uuid.uuid4().hex
        ids = list(waiting.order_by("pk").values_list("pk", flat=True)[:limit])
        if not ids:
            return []
        RelayRequest.objects.filter(pk__in=ids, taken_at=None).update(taken_at=now, taken_by=token)
        return list(
            RelayRequest.objects.filter(taken_by=token)
            .order_by("pk")
            .values_list("payload", flat=True)
        )

    def take(self, *, deployment_id: str, limit: int, wait: float) -> list[dict[str, Any]]:
        limit = max(1, min(limit, MAX_TAKE))
        return list(_poll(lambda: self._take_once(deployment_id, limit), wait))

    def reply(self, *, deployment_id: str, replies: list[dict[str, Any]]) -> list[str]:
        ids = sorted({str(item["request"]) for item in replies})
        alive = set(
            RelayRequest.objects.filter(
                deployment_id=deployment_id, request_id__in=ids
            ).values_list("request_id", flat=True)
        )
        RelayReply.objects.bulk_create(
            RelayReply(deployment_id=deployment_id, request_id=str(item["request"]), payload=item)
            for item in replies
            if str(item["request"]) in alive
        )
        return [request_id for request_id in ids if request_id not in alive]

    def _read_once(self, deployment_id: str, request_id: str) -> list[dict[str, Any]]:
        rows = list(
            RelayReply.objects.filter(deployment_id=deployment_id, request_id=request_id)
            .order_by("pk")
            .values_list("pk", "payload")[:MAX_TAKE]
        )
        if rows:
            RelayReply.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
        return [payload for _, payload in rows]

    def replies(self, *, deployment_id: str, request_id: str, wait: float) -> list[dict[str, Any]]:
        return list(_poll(lambda: self._read_once(deployment_id, request_id), wait))

    def forget(self, *, deployment_id: str, request_id: str) -> None:
        RelayRequest.objects.filter(deployment_id=deployment_id, request_id=request_id).delete()
        RelayReply.objects.filter(deployment_id=deployment_id, request_id=request_id).delete()


_lock = threading.Lock()


@lru_cache(maxsize=4)
def _relay_for(kind: str, url: str) -> RelayQueue:
    if kind == "redis":
        return RedisRelay(url)
    return DatabaseRelay()


def relay() -> RelayQueue:
    """The configured queues (``INFERENCE_RELAY``)."""
    with _lock:
        return _relay_for(settings.INFERENCE_RELAY, settings.REDIS_URL)
