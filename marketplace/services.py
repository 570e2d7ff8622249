"""Every write of the marketplace: orders, matching rounds, the lease lifecycle,
preemption and failover. Keyword-only, typed, one transaction each (retried whole
on a deadlock or serialization failure).

Money (see also billing/credit.py, behind the ``credit`` port):

- **Placing a raw order reserves** the buyer's credit for its maximum cost: every
  GPU for the whole duration at the limit price, plus the platform fee (an
  open-ended order: its first billing window). Not enough → 402 with the amount
  missing. The reservation is a ledger hold ``order-<id>:r<n>`` that is only ever
  released: when the order is cancelled or expires, or when it is filled.
- **A lease converts the reservation**: in the transaction that creates the lease,
  the order's reservation is released and the lease's own hold
  ``lease-<id>:w1`` is placed for the lease's maximum cost at the lease price (the
  offer's, at or below the limit, so it always fits in what was released).
- **Ending a lease settles its hold**: GPU-seconds delivered (from the window's start
  to the end, or to the last good heartbeat of a failed node, or to a forced
  withdrawal or a preemption) x price / 3600, rounded half-even once, plus the fee,
  posted in one journal entry to the provider's payable and the platform's fees;
  the rest is released. Open-ended leases are billed a window at a time
  (``MARKETPLACE_BILLING_WINDOW_SECONDS``): each window is settled when it ends and
  the next one held; when credit cannot cover the next window, the lease ends.
- **Managed work** (orders whose workload is a fine-tune or an inference deployment)
  is paid for by the buyer per token, not here: such orders reserve nothing, and
  their leases' holds are on the platform's cost of revenue, settled to the
  provider at the lease price with no fee.

Concurrency: a matching round holds a PostgreSQL advisory lock (two matchers take
turns), applies each allocation in its own short transaction that re-locks the order
and the offers and re-checks them, and the unique index over live lease GPUs refuses
any double allocation regardless. Order rows are locked before lease rows in every
flow, so flows do not deadlock one another.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Literal

import msgspec
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from msgspec import Meta

from core.db import is_postgres, retry_transaction
from core.errors import Conflict, Forbidden, InsufficientFunds
from core.eventstore import DomainEvent, event_append, stream_version
from core.models import Organization
from core.money import MAX_AMOUNT_MICROS, Money
from core.validation import field_error, validated
from marketplace import engine, events
from marketplace.assignments import services as assignments
from marketplace.models import Lease, LeaseGpu, Order
from pricing.services import LEASE_CREDIT, GpuTimeCost, LeaseCredit
from providers import catalog
from providers import services as provider_services
from providers.models import Gpu, Node, NodeLeaseOutcome, Offer

logger = logging.getLogger(__name__)

MAX_GPUS_PER_NODE = 64
MAX_NODES = 64
MAX_DURATION_SECONDS = 366 * 86_400
MAX_PRICE_MICROS = 10**12  # per GPU-hour: a million units of the currency
HOLD_MARGIN = timedelta(days=1)  # a hold outlives what it backs by this much
MATCHING_LOCK = 0x7A6E_6D61  # advisory lock key of matching rounds ("matching")


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
        expected_version=stream_version(stream_id),
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
        from marketplace.tasks import match_orders

        try:
            match_orders.send()
        except Exception:  # the broker being down must not fail the order: the loop runs too
            logger.warning("could not ask for a matching round", exc_info=True)

    transaction.on_commit(send)


# --- orders -----------------------------------------------------------------


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


def _order_locked(order_id: int) -> Order:
    return Order.objects.select_for_update().get(pk=order_id)


def _live_leases_locked(order: Order) -> list[Lease]:
    return list(
        Lease.objects.select_for_update()
        .filter(order=order, state__in=Lease.LIVE_STATES)
        .order_by("pk")
    )


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


# --- leases: closing and settling ---------------------------------------------


def _delivered_seconds(lease: Lease, until: datetime) -> int:
    """Whole seconds of the current billing window delivered up to ``until``."""
    if lease.window_start is None:
        return 0
    end = min(until, lease.window_end) if lease.window_end is not None else until
    return max(0, int((end - lease.window_start).total_seconds()))


def _settle_window(lease: Lease, until: datetime) -> GpuTimeCost:
    seconds = _delivered_seconds(lease, until)
    cost = credit().gpu_time_cost(
        gpu_seconds=seconds * lease.gpu_count,
        price_micros_per_gpu_hour=lease.price_per_gpu_hour_micros,
        currency=lease.currency,
        managed=lease.managed,
    )
    if cost.buyer_micros > lease.hold_micros:  # never more than was held (cannot happen:
        raise AssertionError(f"lease {lease.pk}: {cost} exceeds its hold")  # capped above)
    credit().lease_hold_settle(
        hold_id=lease.hold_id, provider_organization_id=lease.provider_id, cost=cost
    )
    lease.gpu_seconds_billed += cost.gpu_seconds
    lease.billed_micros += cost.buyer_micros
    if lease.window_start is not None:
        lease.billed_until = lease.window_start + timedelta(seconds=seconds)
    return cost


_CLOSED_EVENTS: dict[str, type[events._LeaseClosed]] = {
    Lease.State.ENDED: events.LeaseEnded,
    Lease.State.PREEMPTED: events.LeasePreempted,
    Lease.State.FAILED: events.LeaseFailed,
    Lease.State.CANCELLED: events.LeaseCancelled,
}


def _lease_close(
    lease: Lease, *, state: str, until: datetime, reason: str, outcome: str, now: datetime
) -> GpuTimeCost:
    """Settle a live lease's hold to ``until``, free its GPUs and record how it ended.
    The caller holds the order's and the lease's row locks."""
    # Work on the lease's node ends with it: its agent is told to stop at once. First,
    # before the settlement appends events: see assignments_stop_for_lease on lock order.
    assignments.assignments_stop_for_lease(lease_id=lease.pk, reason=f"lease {state}", now=now)
    if lease.state == Lease.State.ACTIVE:
        cost = _settle_window(lease, until)
    else:  # never started: nothing delivered
        credit().release(hold_id=lease.hold_id)
        cost = GpuTimeCost(gpu_seconds=0, provider_micros=0, fee_micros=0)
    lease.state = state
    lease.ended_at = now
    lease.end_reason = reason[:200]
    lease.save()
    LeaseGpu.objects.filter(lease=lease, live=True).update(live=False)
    node = Node.objects.get(pk=lease.node_id)
    provider_services.node_lease_outcome_record(
        node=node, lease_id=lease.usage_subject, outcome=outcome, ended_at=now
    )
    _lease_event(
        lease,
        _CLOSED_EVENTS[state](
            lease_id=lease.pk,
            order_id=lease.order_id,
            organization_id=lease.organization_id,
            provider_id=lease.provider_id,
            node_id=lease.node_id,
            billed_until=_iso(lease.billed_until),
            gpu_seconds=cost.gpu_seconds,
            provider_micros=cost.provider_micros,
            fee_micros=cost.fee_micros,
            reason=reason,
            at=now.isoformat(),
        ),
    )
    return cost


def _after_leases_closed(
    order: Order, *, requeue: bool, delivered_seconds: int, reason: str, now: datetime
) -> None:
    """The order of leases that just closed: back in the book (a standing order whose
    lease was preempted or failed, with what is left to run), or completed."""
    if (
        order.state != Order.State.FILLED
        or Lease.objects.filter(order=order, state__in=Lease.LIVE_STATES).exists()
    ):
        return
    left = None
    if order.duration_seconds is not None:
        left = (order.remaining_seconds or order.duration_seconds) - delivered_seconds
    wants_more = left is None or left >= 60
    if requeue and wants_more and order.time_in_force == Order.TimeInForce.STANDING:
        order.remaining_seconds = left
        order.state = Order.State.OPEN
        order.requeues += 1
        try:
            with transaction.atomic():
                _reserve(order)
        except InsufficientFunds:
            order.reservations -= 1
            _order_expire(order, reason="not enough credit to go back in the book", now=now)
            return
        order.save()
        _order_event(
            order,
            events.OrderRequeued(
                order_id=order.pk,
                organization_id=order.organization_id,
                reason=reason,
                remaining_seconds=left,
                reserved_micros=order.reserved_micros,
                at=now.isoformat(),
            ),
        )
        matching_request()
        return
    order.state = Order.State.COMPLETED
    order.closed_at = now
    order.close_reason = reason[:200]
    order.save()
    _order_event(
        order,
        events.OrderCompleted(
            order_id=order.pk, organization_id=order.organization_id, at=now.isoformat()
        ),
    )


@retry_transaction
def lease_end(
    *,
    lease: Lease,
    state: str = Lease.State.ENDED,
    until: datetime | None = None,
    reason: str = "ended",
    outcome: str = NodeLeaseOutcome.Outcome.COMPLETED,
    requeue: bool = False,
    now: datetime | None = None,
) -> Lease:
    """End a live lease (and the rest of its gang) billed to ``until`` (default now).
    A lease already closed is returned as it is: each hold settles exactly once."""
    now = now or timezone.now()
    until = min(until or now, now)
    order = _order_locked(lease.order_id)
    gang = list(
        Lease.objects.select_for_update()
        .filter(order=order, allocation=lease.allocation, state__in=Lease.LIVE_STATES)
        .order_by("pk")
    )
    target = next((g for g in gang if g.pk == lease.pk), None)
    if target is None:
        return Lease.objects.get(pk=lease.pk)
    delivered = 0
    if target.started_at is not None:
        delivered = max(0, int((until - target.started_at).total_seconds()))
    for member in gang:
        if member.pk == target.pk:
            _lease_close(member, state=state, until=until, reason=reason, outcome=outcome, now=now)
        else:  # a gang runs together: the others end with it, billed to the same moment
            # A gang that failed or was preempted failed for every member (what the
            # workload on any member's lease follows: it resumes on the next gang);
            # their nodes' records say completed: the fault was not theirs.
            member_state: str
            if member.state != Lease.State.ACTIVE:
                member_state = Lease.State.CANCELLED
            elif state in (Lease.State.FAILED, Lease.State.PREEMPTED):
                member_state = state
            else:
                member_state = Lease.State.ENDED
            _lease_close(
                member,
                state=member_state,
                until=until,
                reason=f"gang member lease {target.pk}: {reason}",
                outcome=NodeLeaseOutcome.Outcome.COMPLETED,
                now=now,
            )
    _after_leases_closed(
        order, requeue=requeue, delivered_seconds=delivered, reason=reason, now=now
    )
    target.refresh_from_db()
    return target


# --- lifecycle ticks ------------------------------------------------------------


def _activate(lease: Lease, order: Order, now: datetime) -> None:
    lease.state = Lease.State.ACTIVE
    lease.started_at = now
    lease.window_start = now
    lease.save()
    uuids = list(lease.gpus.order_by("gpu_uuid").values_list("gpu_uuid", flat=True))
    _lease_event(
        lease,
        events.LeaseStarted(
            lease_id=lease.pk,
            order_id=order.pk,
            organization_id=lease.organization_id,
            provider_id=lease.provider_id,
            node_id=lease.node_id,
            gpu_uuids=uuids,
            workload_kind=order.workload_kind,
            workload_id=order.workload_id,
            usage_subject=lease.usage_subject,
            ends_at=_iso(lease.ends_at),
            at=now.isoformat(),
        ),
    )


@retry_transaction
def _lease_renew(lease_id: int, now: datetime) -> bool:
    _order_locked(Lease.objects.values_list("order_id", flat=True).get(pk=lease_id))
    lease = Lease.objects.select_for_update().get(pk=lease_id)
    if lease.state != Lease.State.ACTIVE or lease.window_end is None or lease.window_end > now:
        return False
    if lease.ends_at is not None and lease.ends_at <= lease.window_end:
        return False  # the end tick closes it
    settled_window = lease.window
    cost = _settle_window(lease, lease.window_end)
    window_start = lease.window_end
    window_end = window_start + billing_window()
    if lease.ends_at is not None:
        window_end = min(window_end, lease.ends_at)
    lease.window += 1
    lease.window_start, lease.window_end = window_start, window_end
    try:
        with transaction.atomic():
            lease.hold_micros = _hold_lease_window(lease)
    except InsufficientFunds:
        lease.window -= 1
        lease.save()
        lease_end(
            lease=lease,
            until=window_start,
            reason="credit ran out for the next billing window",
            outcome=NodeLeaseOutcome.Outcome.COMPLETED,
            now=now,
        )
        return True
    lease.save()
    _lease_event(
        lease,
        events.LeaseRenewed(
            lease_id=lease.pk,
            organization_id=lease.organization_id,
            settled_window=settled_window,
            window=lease.window,
            window_end=window_end.isoformat(),
            hold_id=lease.hold_id,
            hold_micros=lease.hold_micros,
            billed_micros=cost.buyer_micros,
            at=now.isoformat(),
        ),
    )
    return True


def leases_tick(*, now: datetime | None = None) -> dict[str, int]:
    """Move leases along in time: end those whose time is up, preempt those whose
    notice ran out, renew open-ended billing windows. Idempotent."""
    now = now or timezone.now()
    done = {"ended": 0, "preempted": 0, "renewed": 0}
    due_end = Lease.objects.filter(state=Lease.State.ACTIVE, ends_at__lte=now).order_by("pk")
    for lease in due_end:
        lease_end(lease=lease, until=lease.ends_at, reason="ran its duration", now=now)
        done["ended"] += 1
    due_preempt = Lease.objects.filter(state__in=Lease.LIVE_STATES, preempt_at__lte=now).order_by(
        "pk"
    )
    for lease in due_preempt:
        lease_end(
            lease=lease,
            state=Lease.State.PREEMPTED,
            until=lease.preempt_at,
            reason=f"preempted for order {lease.preempted_for_id}",
            outcome=NodeLeaseOutcome.Outcome.PREEMPTED,
            requeue=True,
            now=now,
        )
        done["preempted"] += 1
    due_window = Lease.objects.filter(state=Lease.State.ACTIVE, window_end__lte=now).order_by("pk")
    for lease in due_window:
        if _lease_renew(lease.pk, now):
            done["renewed"] += 1
    return done


def _hold_lease_window(lease: Lease) -> int:
    """Place the hold for the lease's current window; return its amount."""
    assert lease.window_start is not None and lease.window_end is not None
    seconds = int((lease.window_end - lease.window_start).total_seconds())
    cost = credit().gpu_time_cost(
        gpu_seconds=seconds * lease.gpu_count,
        price_micros_per_gpu_hour=lease.price_per_gpu_hour_micros,
        currency=lease.currency,
        managed=lease.managed,
    )
    amount = max(cost.buyer_micros, 1)  # a hold is positive; a sub-micro window costs 0
    credit().lease_hold_place(
        hold_id=lease.hold_id,
        buyer_organization_id=None if lease.managed else lease.organization_id,
        provider_organization_id=lease.provider_id,
        amount_micros=amount,
        currency=lease.currency,
        expires_at=lease.window_end + HOLD_MARGIN,
        description=f"lease {lease.pk} window {lease.window}: {lease.gpu_count}x "
        f"{lease.gpu_model} at {Money(lease.price_per_gpu_hour_micros, lease.currency)}/GPU-hour",
    )
    return amount


# --- failover -----------------------------------------------------------------


def node_failover(*, node_id: int, last_good: datetime | None, now: datetime | None = None) -> int:
    """A node went unhealthy: its live leases fail at its last good heartbeat (nothing
    is billed after it), standing orders go back in the book. Returns leases failed."""
    now = now or timezone.now()
    failed = 0
    live = Lease.objects.filter(node_id=node_id, state__in=Lease.LIVE_STATES).order_by("pk")
    for lease in live:
        until = min(last_good or lease.window_start or now, now)
        if lease.window_start is not None:
            until = max(until, lease.window_start)
        lease_end(
            lease=lease,
            state=Lease.State.FAILED,
            until=until,
            reason="node failed (heartbeats stopped)",
            outcome=NodeLeaseOutcome.Outcome.NODE_FAILED,
            requeue=True,
            now=now,
        )
        failed += 1
    return failed


def offer_forced_end(*, offer_id: int, at: datetime, now: datetime | None = None) -> int:
    """The provider force-withdrew an offer: its live leases end at ``at`` (billed to
    it); standing orders go back in the book."""
    now = now or timezone.now()
    ended = 0
    live = Lease.objects.filter(offer_id=offer_id, state__in=Lease.LIVE_STATES).order_by("pk")
    for lease in live:
        lease_end(
            lease=lease,
            state=Lease.State.FAILED,
            until=at,
            reason="the provider withdrew the offer",
            outcome=NodeLeaseOutcome.Outcome.PROVIDER_ENDED,
            requeue=True,
            now=now,
        )
        ended += 1
    return ended


# --- matching -------------------------------------------------------------------


@dataclass(slots=True)
class RoundResult:
    orders_considered: int = 0
    allocations: int = 0
    leases: list[int] = field(default_factory=list)
    preemptions: int = 0
    conflicts: int = 0
    expired: int = 0
    skipped: bool = False  # another matcher held the lock (try_lock only)


@contextlib.contextmanager
def _matching_lock(*, wait: bool) -> Iterator[bool]:
    """A session advisory lock: one matching round at a time across processes."""
    if not is_postgres():
        yield True
        return
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_lock(%s)", [MATCHING_LOCK])
            got = True
        else:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [MATCHING_LOCK])
            got = bool(cursor.fetchone()[0])
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MATCHING_LOCK])


class _AllocationConflict(Exception):
    """Another matcher took a GPU first (the unique index said so): roll back."""


def matching_round(
    *, now: datetime | None = None, lock: bool = True, wait: bool = True
) -> RoundResult:
    """One round: expire, tick leases, snapshot the market, run the engine, apply.
    ``lock=False`` skips the advisory lock (tests prove the database alone refuses a
    double allocation); ``wait=False`` returns at once when another round is running."""
    from marketplace.selectors import market_snapshot

    result = RoundResult()
    now = now or timezone.now()
    if connection.in_atomic_block:
        raise RuntimeError("matching_round runs its own transactions; call it outside one")
    with contextlib.ExitStack() as stack:
        if lock:
            got = stack.enter_context(_matching_lock(wait=wait))
            if not got:
                result.skipped = True
                return result
        result.expired = orders_expire(now=now)
        leases_tick(now=now)
        snapshot, offers = market_snapshot(now=now)
        result.orders_considered = len(snapshot.orders)
        matched = engine.match(snapshot)
        for allocation in matched.allocations:
            try:
                leases = _allocation_apply(allocation, offers=offers, now=now)
            except _AllocationConflict:
                result.conflicts += 1
                continue
            if leases:
                result.allocations += 1
                result.leases.extend(leases)
        for preemption in matched.preemptions:
            if _preemption_apply(preemption, now=now):
                result.preemptions += 1
        matched_ids = {a.order_id for a in matched.allocations}
        for order_id in sorted(_ioc_ids(snapshot) - matched_ids):
            if _order_expire_if_open(order_id, "immediate-or-cancel: no match", now):
                result.expired += 1
    return result


def _ioc_ids(snapshot: engine.Snapshot) -> set[int]:
    ids = [o.order_id for o in snapshot.orders]
    return set(
        Order.objects.filter(pk__in=ids, time_in_force=Order.TimeInForce.IOC).values_list(
            "pk", flat=True
        )
    )


@retry_transaction
def _allocation_apply(
    allocation: engine.Allocation, *, offers: dict[int, engine.OfferState], now: datetime
) -> list[int]:
    order = Order.objects.select_for_update().filter(pk=allocation.order_id).first()
    if order is None or order.state != Order.State.OPEN:
        return []  # cancelled or expired since the snapshot
    offer_ids = sorted({p.offer_id for p in allocation.placements})
    locked = {
        o.pk: o for o in Offer.objects.select_for_update().filter(pk__in=offer_ids).order_by("pk")
    }
    for placement in allocation.placements:
        offer = locked.get(placement.offer_id)
        if (
            offer is None
            or offer.status != Offer.Status.ACTIVE
            or offer.price_per_gpu_hour_micros > order.limit_price_per_gpu_hour_micros
        ):
            return []  # paused, withdrawn or repriced past the limit meanwhile
    healthy = set(
        Node.objects.filter(
            pk__in=[p.node_id for p in allocation.placements], health=Node.Health.HEALTHY
        ).values_list("pk", flat=True)
    )
    if len(healthy) != len(allocation.placements):
        return []
    _release_reservation(order)
    tag = uuid.uuid4().hex
    seconds = order.remaining_seconds or order.duration_seconds
    ends_at = now + timedelta(seconds=seconds) if seconds is not None else None
    created: list[Lease] = []
    for placement in allocation.placements:
        offer = locked[placement.offer_id]
        lease = Lease.objects.create(
            order=order,
            allocation=tag,
            organization_id=order.organization_id,
            provider_id=offer.organization_id,
            offer=offer,
            node_id=placement.node_id,
            kind=order.kind,
            managed=order.managed,
            gpu_model=offer.gpu_model,
            gpu_count=len(placement.gpu_ids),
            price_per_gpu_hour_micros=offer.price_per_gpu_hour_micros,  # pay-as-ask
            currency=offer.currency,
            created_at=now,
            starts_at=now,
            ends_at=ends_at,
            window_start=now,
            window_end=ends_at if ends_at is not None else now + billing_window(),
        )
        gpus = list(Gpu.objects.filter(pk__in=placement.gpu_ids).order_by("pk"))
        try:
            with transaction.atomic():
                LeaseGpu.objects.bulk_create(
                    [LeaseGpu(lease=lease, gpu=gpu, gpu_uuid=gpu.uuid) for gpu in gpus]
                )
        except IntegrityError:
            raise _AllocationConflict(f"GPUs of offer {offer.pk} were leased meanwhile") from None
        lease.hold_micros = _hold_lease_window(lease)
        lease.save(update_fields=["hold_micros"])
        _lease_event(
            lease,
            events.LeaseAllocated(
                lease_id=lease.pk,
                order_id=order.pk,
                organization_id=order.organization_id,
                provider_id=lease.provider_id,
                offer_id=offer.pk,
                node_id=lease.node_id,
                gpu_uuids=sorted(gpu.uuid for gpu in gpus),
                gpu_model=lease.gpu_model,
                price_per_gpu_hour_micros=lease.price_per_gpu_hour_micros,
                currency=lease.currency,
                kind=lease.kind,
                starts_at=now.isoformat(),
                ends_at=_iso(ends_at),
                hold_id=lease.hold_id,
                hold_micros=lease.hold_micros,
                at=now.isoformat(),
            ),
        )
        created.append(lease)
    for lease in created:
        _activate(lease, order, now)
    order.state = Order.State.FILLED
    order.save()
    _order_event(
        order,
        events.OrderFilled(
            order_id=order.pk,
            organization_id=order.organization_id,
            lease_ids=[lease.pk for lease in created],
            at=now.isoformat(),
        ),
    )
    return [lease.pk for lease in created]


@retry_transaction
def _preemption_apply(preemption: engine.Preemption, *, now: datetime) -> bool:
    order = Order.objects.select_for_update().filter(pk=preemption.order_id).first()
    if order is None or order.state != Order.State.OPEN:
        return False
    offer = Offer.objects.get(pk=preemption.offer_id)
    grace = timedelta(seconds=offer.preemption_grace_seconds or 0)
    victims = list(
        Lease.objects.select_for_update()
        .filter(
            pk__in=preemption.lease_ids,
            state=Lease.State.ACTIVE,
            kind=Order.Kind.INTERRUPTIBLE,
            preempted_for__isnull=True,
        )
        .order_by("pk")
    )
    if len(victims) != len(preemption.lease_ids):
        return False
    for victim in victims:
        victim.preemption_noticed_at = now
        victim.preempt_at = now + grace
        victim.preempted_for = order
        victim.save(update_fields=["preemption_noticed_at", "preempt_at", "preempted_for"])
        _lease_event(
            victim,
            events.LeasePreemptionNoticed(
                lease_id=victim.pk,
                organization_id=victim.organization_id,
                node_id=victim.node_id,
                gpu_uuids=sorted(victim.gpus.values_list("gpu_uuid", flat=True)),
                for_order_id=order.pk,
                preempt_at=victim.preempt_at.isoformat(),
                at=now.isoformat(),
            ),
        )
    return True
