"""What the role modules of the marketplace share: the settings they read (the billing
window, the longest wait of an order), the buyer's credit and the GPU lease holds
(pricing), appending an order's or a lease's events, and asking for a matching round
(the actor in ``marketplace/tasks.py``, sent by name). The money and concurrency rules
every module keeps are written at the top of ``marketplace/services.py``."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import dramatiq
from django.conf import settings
from django.db import transaction

from core.eventstore import DomainEvent, event_append
from marketplace import events
from marketplace.models import Lease, Order
from pricing.services import LEASE_CREDIT, LeaseCredit

logger = logging.getLogger(__name__)

HOLD_MARGIN = timedelta(days=1)  # a hold outlives what it backs by this much

# The actor in marketplace/tasks.py, sent by name (core/queue.py).
MATCH_ORDERS_TASK = "match_orders"


def billing_window() -> timedelta:
    return timedelta(seconds=settings.MARKETPLACE_BILLING_WINDOW_SECONDS)


def order_max_wait() -> timedelta:
    return timedelta(seconds=settings.MARKETPLACE_ORDER_MAX_WAIT_SECONDS)


def credit() -> LeaseCredit:
    """The buyer's credit, reservations and the GPU lease holds (pricing)."""
    return LEASE_CREDIT


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _append(*, stream_type: str, stream_id: str, tenant_id: int, items: list[DomainEvent]) -> None:
    # Callers hold the row lock of the order or lease, so the version is stable.
    event_append(
        stream_type=stream_type,
        stream_id=stream_id,
        expected_version=None,
        events=[item.to_new_event() for item in items],
        tenant_id=tenant_id,
    )


def _order_event(order: Order, *items: DomainEvent) -> None:
    _append(
        stream_type=events.ORDER_STREAM,
        stream_id=order.stream_id,
        tenant_id=order.organization_id,
        items=list(items),
    )


def _lease_event(lease: Lease, *items: DomainEvent) -> None:
    _append(
        stream_type=events.LEASE_STREAM,
        stream_id=lease.stream_id,
        tenant_id=lease.organization_id,
        items=list(items),
    )


def matching_request() -> None:
    """Ask for a matching round once this transaction commits (the actor runs it)."""

    def send() -> None:
        try:
            dramatiq.get_broker().get_actor(MATCH_ORDERS_TASK).send()
        except Exception:  # the broker being down must not fail the order: the loop runs too
            logger.warning("could not ask for a matching round", exc_info=True)

    transaction.on_commit(send)
