"""Health of what a request needs: the database and the task broker.

Each check answers a small dict that is safe to show anyone: whether it worked, what
kind of thing was checked, and on failure only the exception's class name. The full
error (which may name hosts or users) goes to the log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
from django.db import connection

logger = logging.getLogger(__name__)


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def check_database() -> dict[str, Any]:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("health check: database unavailable", exc_info=True)
        return {"ok": False, "vendor": connection.vendor, "error": type(exc).__name__}
    return {"ok": True, "vendor": connection.vendor, "latency_ms": _elapsed_ms(started)}


def check_broker() -> dict[str, Any]:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.brokers.stub import StubBroker

    broker = dramatiq.get_broker()
    if isinstance(broker, StubBroker):
        # Messages stay in this process: nothing to reach.
        return {"ok": True, "kind": "in-process"}
    kind = {RedisBroker: "redis", RabbitmqBroker: "rabbitmq"}.get(type(broker), "other")
    started = time.monotonic()
    try:
        if isinstance(broker, RedisBroker):
            broker.client.ping()
        elif isinstance(broker, RabbitmqBroker):
            try:
                broker.connection.process_data_events(time_limit=0)
            except Exception:
                del broker.connection  # drop the dead one; the next use reconnects
                raise
        else:
            return {"ok": False, "kind": kind, "error": "unknown broker"}
    except Exception as exc:
        logger.warning("health check: broker unavailable", exc_info=True)
        return {"ok": False, "kind": kind, "error": type(exc).__name__}
    return {"ok": True, "kind": kind, "latency_ms": _elapsed_ms(started)}
