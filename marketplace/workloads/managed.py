"""What the workloads' writes share: managed work's orders and leases (the order a
fine-tune job or an inference deployment places for its GPUs, the lease's end, GPU
sizing) and the event append. The writes themselves live by role: files.py, jobs.py,
inference.py (the gateway: gateway.py); services.py re-exports those the apps above
use."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from core.eventstore import event_append
from core.models import Organization
from core.ports import ModelCard
from marketplace import services as market
from marketplace.models import Lease, Order
from marketplace.workloads import ports as external
from providers import catalog

# A GPU's memory as the order book sells it; the runtime's figures are per model.
GPU_MEMORY_GIB = 80


def append_event(stream_id: str, stream_type: str, event: Any, tenant_id: int | None) -> None:
    # Appended last in the transaction: the store's append lock is held to commit.
    event_append(
        stream_type=stream_type,
        stream_id=stream_id,
        expected_version=None,
        events=[event.to_new_event()],
        tenant_id=tenant_id,
    )


def gpu_memory_need_gib(card: ModelCard, work: str) -> float:
    """GiB of GPU memory ``work`` on ``card`` needs: ``full`` training holds weights,
    gradients and Adam's two moments in fp32 (16 bytes a parameter); ``lora`` training
    and ``serve`` (an inference deployment) hold bf16 weights (2 bytes) and a small
    adapter. A fifth more covers activations (serving: the KV cache)."""
    bytes_per_parameter = 16 if work == "full" else 2
    return card.parameter_count * bytes_per_parameter * 1.2 / 2**30


def gpus_for(card: ModelCard, work: str) -> int:
    """GPUs a fine-tune (``lora``, ``full``) or a deployment (``serve``) of ``card`` needs."""
    return max(1, math.ceil(gpu_memory_need_gib(card, work) / GPU_MEMORY_GIB))


def order_place_managed(
    *,
    organization: Organization,
    model: str,
    work: str,
    gpus: int,
    workload_kind: str,
    workload_id: str,
    interruptible: bool = False,
) -> str:
    """Place the order of managed work (a fine-tune job, an inference deployment):
    standing, open-ended and on demand (``interruptible``: on spare GPUs that an
    on-demand order may preempt, as a batch's deployment runs), for ``gpus`` GPUs of
    one node, at most the platform's limit price. The lease is the platform's cost
    (the buyer pays per token), so the order reserves no buyer credit. Returns the
    order's id."""
    card = external.base_model(model)
    need_gib = gpu_memory_need_gib(card, work) if card else GPU_MEMORY_GIB
    order = market.order_place(
        organization=organization,
        spec=market.OrderSpec(
            gpus_per_node=gpus,
            limit_price_per_gpu_hour_micros=settings.WORKLOADS_GPU_HOUR_LIMIT_MICROS,
            # Any GPU in the catalog with the memory each GPU's share needs.
            gpu_models=[m.slug for m in catalog.CATALOG],
            min_gpu_memory_gib=max(1, math.ceil(need_gib / gpus)),
            kind=Order.Kind.INTERRUPTIBLE if interruptible else Order.Kind.ON_DEMAND,
            time_in_force=Order.TimeInForce.STANDING,
            duration_seconds=None,
        ),
        workload_kind=workload_kind,
        workload_id=workload_id,
    )
    return str(order.pk)


def order_cancel(order_ref: str, *, now: datetime | None = None) -> None:
    order = Order.objects.filter(pk=int(order_ref)).first()
    if order is not None and order.state in Order.LIVE_STATES:
        market.order_cancel(order=order, now=now)


def order_live(order_ref: str) -> bool:
    return bool(order_ref) and (
        Order.objects.filter(pk=int(order_ref), state__in=Order.LIVE_STATES).exists()
    )


def whole_minutes_until(started_at: datetime, now: datetime) -> datetime:
    """The last whole minute of a lease that started at ``started_at``, at ``now``.

    A dedicated endpoint's replica is billed per minute, rounded down: a lease the
    buyer ends (scaling down, an idle stop, a delete) is settled to the last whole
    minute since it started, and the seconds of a minute begun are neither billed
    nor paid. Down, not up, because a hold settles GPU time already delivered (the
    order book never bills a moment that has not passed), and a minute the buyer
    did not get in full is not the buyer's to pay; every charge is then a whole
    number of minutes at the lease price plus the fee. Its billing windows (an hour
    by default) renew at whole minutes from the start, so each settlement of a
    running replica is whole minutes too. A lease the market ends under it
    (its node lost, its provider withdrew) is billed as every lease is, to the
    second it was last delivered."""
    elapsed = max(0, int((now - started_at).total_seconds()))
    return started_at + timedelta(seconds=elapsed - elapsed % 60)


def lease_end(
    lease_ref: str, reason: str, *, now: datetime | None = None, whole_minutes: bool = False
) -> None:
    """End a live lease, billed to ``now`` (default: now), or with ``whole_minutes`` to
    its last whole minute (``whole_minutes_until``): the provider's GPU-seconds are
    settled. A lease already closed is left as it is."""
    lease = Lease.objects.filter(pk=int(lease_ref)).first()
    if lease is not None and lease.state in Lease.LIVE_STATES:
        until = None
        if whole_minutes and lease.started_at is not None:
            until = whole_minutes_until(lease.started_at, now or timezone.now())
        market.lease_end(lease=lease, reason=reason, until=until, now=now)
