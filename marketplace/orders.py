"""Orders: what a buyer asks for (``OrderSpec``, checked by ``order_place``), placing
one, cancelling one and expiring those that can no longer be matched."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Literal

import msgspec
from django.conf import settings
from django.utils import timezone
from msgspec import Meta

from core.db import retry_transaction
from core.errors import Conflict, Forbidden
from core.models import Organization
from core.money import MAX_AMOUNT_MICROS
from core.validation import field_error, validated
from marketplace import events
from marketplace.common import _order_event, matching_request, order_max_wait
from marketplace.lease_closing import _lease_close
from marketplace.models import Lease, Order
from marketplace.order_book import (
    _book_expiry,
    _live_leases_locked,
    _order_expire_if_open,
    _order_locked,
    _release_reservation,
    _reserve,
)
from providers import catalog
from providers.models import NodeLeaseOutcome

MAX_GPUS_PER_NODE = 64
MAX_NODES = 64
MAX_DURATION_SECONDS = 366 * 86_400
MAX_PRICE_MICROS = 10**12  # per GPU-hour: a million units of the currency


GpuModelSlug = Annotated[str, Meta(min_length=1, max_length=64)]
CountryCode = Annotated[str, Meta(pattern="^[A-Za-z]{2}$")]
Aware = Annotated[datetime, Meta(tz=True)]


class OrderSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a buyer asks for, with the bounds of each field; ``order_place`` checks
    it (core.validation) and then the rules between fields."""

    gpus_per_node: Annotated[int, Meta(ge=1, le=MAX_GPUS_PER_NODE)]
    limit_price_per_gpu_hour_micros: Annotated[int, Meta(ge=1, le=MAX_PRICE_MICROS)]
    gpu_models: Annotated[Sequence[GpuModelSlug], Meta(max_length=256)] = ()
    gpu_model_at_least: Annotated[str, Meta(max_length=64)] = ""
    node_count: Annotated[int, Meta(ge=1, le=MAX_NODES)] = 1
    kind: Order.Kind = Order.Kind.ON_DEMAND
    time_in_force: Order.TimeInForce = Order.TimeInForce.STANDING
    min_gpu_memory_gib: Annotated[int, Meta(ge=0, le=10_000)] = 0
    interconnect: Literal["", "nvlink", "pcie"] = ""  # empty: any
    regions: Annotated[Sequence[Annotated[str, Meta(max_length=64)]], Meta(max_length=32)] = ()
    countries: Annotated[Sequence[CountryCode], Meta(max_length=64)] = ()
    min_reliability: Annotated[float, Meta(ge=0, le=1)] | None = None
    duration_seconds: Annotated[int, Meta(ge=60, le=MAX_DURATION_SECONDS)] | None = None
    earliest_start: Aware | None = None
    deadline: Aware | None = None


class OrderWorkload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an order is for: raw capacity, or managed work named by ``workload_id``."""

    workload_kind: Order.Workload = Order.Workload.RAW
    workload_id: Annotated[str, Meta(max_length=200)] = ""


def _checked_models(spec: OrderSpec) -> list[str]:
    models = list(dict.fromkeys(spec.gpu_models))
    for index, slug in enumerate(spec.gpu_models):
        if catalog.model_get(slug) is None:
            raise field_error(f"gpu_models[{index}]", f"unknown GPU model {slug!r}")
    if spec.gpu_model_at_least:
        if catalog.model_get(spec.gpu_model_at_least) is None:
            raise field_error(
                "gpu_model_at_least", f"unknown GPU model {spec.gpu_model_at_least!r}"
            )
        better = [m.slug for m in catalog.models_at_least(spec.gpu_model_at_least)]
        models = [m for m in models if m in better] if models else better
    if not models:
        raise field_error(
            "gpu_models", "name at least one acceptable GPU model (or gpu_model_at_least)"
        )
    return sorted(models)


@retry_transaction
def order_place(
    *,
    organization: Organization,
    spec: OrderSpec,
    workload_kind: str = Order.Workload.RAW,
    workload_id: str = "",
    now: datetime | None = None,
) -> Order:
    """Put an order in the book. From Python (a fine-tune job, an inference deployment)
    pass ``workload_kind`` and ``workload_id``: the lease's ``LeaseStarted`` event carries
    them back, and managed work reserves no buyer credit here (it is billed per token).

    Raises InvalidInput naming the field, Forbidden for a non-buyer organization, and
    InsufficientFunds (402) with ``details.missing_micros`` when the buyer's available
    credit does not cover the order's maximum cost."""
    now = now or timezone.now()
    if not organization.is_buyer:
        raise Forbidden(f"{organization.name} is not a buyer organization")
    spec = validated(OrderSpec, spec)
    work = validated(OrderWorkload, {"workload_kind": workload_kind, "workload_id": workload_id})
    # The rules between fields, and against the catalog and the settings:
    if work.workload_kind != Order.Workload.RAW and not work.workload_id:
        raise field_error("workload_id", "is required for managed work")
    models = _checked_models(spec)
    duration = spec.duration_seconds
    start = max(spec.earliest_start or now, now)
    deadline = spec.deadline
    if deadline is not None:
        if deadline <= start:
            raise field_error("deadline", "must be after earliest_start and in the future")
        if duration is not None and start + timedelta(seconds=duration) > deadline:
            raise field_error("deadline", "leaves less than duration_seconds after the start")
        if deadline - now > order_max_wait() + timedelta(seconds=duration or 0):
            raise field_error("deadline", "is further away than orders may wait")
    gpus_per_node, node_count = spec.gpus_per_node, spec.node_count
    limit = spec.limit_price_per_gpu_hour_micros
    if gpus_per_node * node_count * (duration or 3600) * limit // 3600 > MAX_AMOUNT_MICROS:
        raise field_error("limit_price_per_gpu_hour_micros", "makes the order's cost too large")
    currency = settings.TANDEM_CURRENCY  # one of core.money.CURRENCIES: settings check it

    order = Order.objects.create(
        organization=organization,
        kind=spec.kind,
        time_in_force=spec.time_in_force,
        workload_kind=work.workload_kind,
        workload_id=work.workload_id,
        gpu_models=models,
        gpu_model_at_least=spec.gpu_model_at_least,
        gpus_per_node=gpus_per_node,
        node_count=node_count,
        min_gpu_memory_gib=spec.min_gpu_memory_gib,
        interconnect=spec.interconnect,
        regions=sorted({region.strip() for region in spec.regions if region.strip()}),
        countries=sorted({country.upper() for country in spec.countries}),
        min_reliability=spec.min_reliability,
        duration_seconds=duration,
        earliest_start=start,
        deadline=deadline,
        limit_price_per_gpu_hour_micros=limit,
        currency=currency,
        placed_at=now,
    )
    _reserve(order)
    order.save(update_fields=["reservation_hold_id", "reserved_micros", "reservations"])
    _order_event(
        order,
        events.OrderPlaced(
            order_id=order.pk,
            organization_id=organization.pk,
            kind=order.kind,
            time_in_force=order.time_in_force,
            workload_kind=order.workload_kind,
            workload_id=order.workload_id,
            gpu_models=models,
            gpus_per_node=gpus_per_node,
            node_count=node_count,
            duration_seconds=duration,
            limit_price_per_gpu_hour_micros=limit,
            currency=currency,
            reserved_micros=order.reserved_micros,
            at=now.isoformat(),
        ),
    )
    matching_request()
    return order


@retry_transaction
def order_cancel(*, order: Order, now: datetime | None = None) -> Order:
    """Cancel an order in any live state: its reservation is released, and its live
    leases end now (billed to now; a lease that had not started bills nothing).
    Cancelling a closed order is a no-op for cancelled ones and a 409 otherwise."""
    now = now or timezone.now()
    order = _order_locked(order.pk)
    if order.state == Order.State.CANCELLED:
        return order
    if order.state not in Order.LIVE_STATES:
        raise Conflict(
            f"order {order.pk} is {order.state}: only open or filled orders can be cancelled",
            details={"state": order.state},
        )
    for lease in _live_leases_locked(order):
        _lease_close(
            lease,
            state=Lease.State.ENDED if lease.state == Lease.State.ACTIVE else Lease.State.CANCELLED,
            until=now,
            reason="cancelled by the buyer",
            outcome=NodeLeaseOutcome.Outcome.CANCELLED_BY_BUYER,
            now=now,
        )
    released = _release_reservation(order)
    order.state = Order.State.CANCELLED
    order.closed_at = now
    order.close_reason = "cancelled by the buyer"
    order.save()
    _order_event(
        order,
        events.OrderCancelled(
            order_id=order.pk,
            organization_id=order.organization_id,
            released_micros=released,
            at=now.isoformat(),
        ),
    )
    return order


def orders_expire(*, now: datetime | None = None) -> int:
    """Expire open orders that can no longer be matched: past their deadline (or the
    longest wait), or a fixed-length order whose lease could no longer end by it."""
    now = now or timezone.now()
    expired = 0
    for order in Order.objects.filter(state=Order.State.OPEN).order_by("pk").iterator():
        latest_start = _book_expiry(order)
        if order.deadline is not None and (order.remaining_seconds or order.duration_seconds):
            latest_start = order.deadline - timedelta(
                seconds=order.remaining_seconds or order.duration_seconds or 0
            )
        if now > latest_start and _order_expire_if_open(order.pk, "not matched in time", now):
            expired += 1
    return expired
