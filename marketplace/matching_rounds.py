"""Matching rounds: expire and tick, snapshot the market, run the pure engine
(``engine.py``), and apply each allocation (leases, their holds and GPUs) and
preemption in its own short transaction. One round at a time across processes (an
advisory lock); the unique index over live lease GPUs refuses a double allocation
regardless."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.db import is_postgres, retry_transaction
from marketplace import engine, events
from marketplace.common import _iso, _lease_event, _order_event, billing_window
from marketplace.lease_lifecycle import _activate, _hold_lease_window, leases_tick
from marketplace.models import Lease, LeaseGpu, Order
from marketplace.order_book import _order_expire_if_open, _release_reservation
from marketplace.orders import orders_expire
from marketplace.preemption import _preemption_apply
from marketplace.selectors import market_snapshot
from providers.models import Gpu, Node, Offer

MATCHING_LOCK = 0x7A6E_6D61  # advisory lock key of matching rounds ("matching")


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
