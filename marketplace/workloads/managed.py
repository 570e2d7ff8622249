"""What the workloads' writes share: managed work's orders and leases (the order a
fine-tune job or an inference deployment places for its GPUs, the lease's end, GPU
sizing) and the event append. The writes themselves live by role: files.py, jobs.py,
inference.py (the gateway: gateway.py); services.py re-exports those the apps above
use."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from django.conf import settings

from core.eventstore import event_append, stream_version
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
        expected_version=stream_version(stream_id),
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
) -> str:
    """Place the order of managed work (a fine-tune job, an inference deployment):
    standing, open-ended and on demand, for ``gpus`` GPUs of one node, at most the
    platform's limit price. The lease is the platform's cost (the buyer pays per
    token), so the order reserves no buyer credit. Returns the order's id."""
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
            kind=Order.Kind.ON_DEMAND,
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


def lease_end(lease_ref: str, reason: str, *, now: datetime | None = None) -> None:
    """End a live lease, billed to ``now`` (default: now): the provider's GPU-seconds
    are settled. A lease already closed is left as it is."""
    lease = Lease.objects.filter(pk=int(lease_ref)).first()
    if lease is not None and lease.state in Lease.LIVE_STATES:
        market.lease_end(lease=lease, reason=reason, now=now)
