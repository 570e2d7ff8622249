"""Dramatiq actors of the marketplace: take ids (or nothing), call a service."""

from __future__ import annotations

import dramatiq

from marketplace import services


@dramatiq.actor(actor_name=services.MATCH_ORDERS_TASK, queue_name="matching", max_retries=3)
def match_orders(order_id: int | None = None) -> None:
    """One matching round, asked for when an order is placed or re-queued, or an
    offer is listed. Rounds take turns (an advisory lock); one that finds another
    running waits for it and then matches what is left, so nothing asked is lost."""
    services.matching_round()


@dramatiq.actor(queue_name="matching", max_retries=3)
def node_failover(node_id: int, last_good: str | None = None) -> None:
    from datetime import datetime

    services.node_failover(
        node_id=node_id, last_good=datetime.fromisoformat(last_good) if last_good else None
    )
