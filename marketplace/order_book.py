"""An order's place in the book, shared by placing, matching and closing: its row
lock, the reservation of the buyer's credit for its maximum cost (and its release),
and its expiry."""

from __future__ import annotations

from datetime import datetime

from core.db import retry_transaction
from marketplace import events
from marketplace.common import HOLD_MARGIN, _order_event, billing_window, credit, order_max_wait
from marketplace.models import Lease, Order


def _order_max_seconds(order: Order) -> int:
    """GPU-seconds a reservation must cover: all GPUs for the duration left, or one
    billing window for an open-ended order."""
    seconds = order.remaining_seconds or order.duration_seconds
    if seconds is None:
        seconds = int(billing_window().total_seconds())
    return seconds * order.gpus_total


def _book_expiry(order: Order) -> datetime:
    return order.deadline or order.earliest_start + order_max_wait()


def _reserve(order: Order) -> None:
    """Reserve the order's maximum cost (raw orders only); InsufficientFunds if short."""
    if order.managed:
        return
    cost = credit().gpu_time_cost(
        gpu_seconds=_order_max_seconds(order),
        price_micros_per_gpu_hour=order.limit_price_per_gpu_hour_micros,
        currency=order.currency,
        managed=False,
    )
    order.reservations += 1
    order.reservation_hold_id = f"{order.stream_id}:r{order.reservations}"
    order.reserved_micros = cost.buyer_micros
    credit().reserve(
        hold_id=order.reservation_hold_id,
        organization_id=order.organization_id,
        amount_micros=cost.buyer_micros,
        currency=order.currency,
        expires_at=_book_expiry(order) + HOLD_MARGIN,
        description=f"reservation for order {order.pk}",
    )


def _release_reservation(order: Order) -> int:
    released = 0
    if order.reservation_hold_id and order.reserved_micros:
        if credit().release(hold_id=order.reservation_hold_id):
            released = order.reserved_micros
        order.reserved_micros = 0
    return released


def _order_locked(order_id: int) -> Order:
    return Order.objects.select_for_update().get(pk=order_id)


def _live_leases_locked(order: Order) -> list[Lease]:
    return list(
        Lease.objects.select_for_update()
        .filter(order=order, state__in=Lease.LIVE_STATES)
        .order_by("pk")
    )


def _order_expire(order: Order, *, reason: str, now: datetime) -> None:
    _release_reservation(order)
    order.state = Order.State.EXPIRED
    order.closed_at = now
    order.close_reason = reason
    order.save()
    _order_event(
        order,
        events.OrderExpired(
            order_id=order.pk,
            organization_id=order.organization_id,
            reason=reason,
            at=now.isoformat(),
        ),
    )


@retry_transaction
def _order_expire_if_open(order_id: int, reason: str, now: datetime) -> bool:
    order = _order_locked(order_id)
    if order.state != Order.State.OPEN:
        return False
    _order_expire(order, reason=reason, now=now)
    return True
