"""The marketplace's event types, appended to the event store (core.eventstore).

Streams: ``order-<id>`` (stream type ``order``) and ``lease-<id>`` (stream type
``lease``), tenant = the buyer organization. Every order and lease transition is one
event. The runtime follows ``LeaseStarted`` (run the work: ``workload_kind`` and
``workload_id`` say which, ``gpu_uuids`` where), ``LeasePreemptionNoticed`` (checkpoint
before ``preempt_at``) and ``LeasePreempted``/``LeaseFailed``/``LeaseEnded`` (stop).
Times are ISO 8601 UTC strings; money is integer micro-units with its currency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.eventstore import DomainEvent

ORDER_STREAM = "order"
LEASE_STREAM = "lease"


# --- orders -----------------------------------------------------------------


@dataclass(frozen=True)
class OrderPlaced(DomainEvent):
    order_id: int
    organization_id: int
    kind: str
    time_in_force: str
    workload_kind: str
    workload_id: str
    gpu_models: list[str]
    gpus_per_node: int
    node_count: int
    duration_seconds: int | None
    limit_price_per_gpu_hour_micros: int
    currency: str
    reserved_micros: int
    at: str


@dataclass(frozen=True)
class OrderFilled(DomainEvent):
    order_id: int
    organization_id: int
    lease_ids: list[int]
    at: str


@dataclass(frozen=True)
class OrderRequeued(DomainEvent):
    """A standing order back in the book after its lease was preempted or failed."""

    order_id: int
    organization_id: int
    reason: str
    remaining_seconds: int | None
    reserved_micros: int
    at: str


@dataclass(frozen=True)
class OrderCompleted(DomainEvent):
    order_id: int
    organization_id: int
    at: str


@dataclass(frozen=True)
class OrderCancelled(DomainEvent):
    order_id: int
    organization_id: int
    released_micros: int
    at: str


@dataclass(frozen=True)
class OrderExpired(DomainEvent):
    order_id: int
    organization_id: int
    reason: str
    at: str


# --- leases -----------------------------------------------------------------


@dataclass(frozen=True)
class LeaseAllocated(DomainEvent):
    """Pending: the GPUs are the lease's from now; it starts at ``starts_at``."""

    lease_id: int
    order_id: int
    organization_id: int
    provider_id: int
    offer_id: int
    node_id: int
    gpu_uuids: list[str]
    gpu_model: str
    price_per_gpu_hour_micros: int
    currency: str
    kind: str
    starts_at: str
    ends_at: str | None
    hold_id: str
    hold_micros: int
    at: str


@dataclass(frozen=True)
class LeaseStarted(DomainEvent):
    lease_id: int
    order_id: int
    organization_id: int
    provider_id: int
    node_id: int
    gpu_uuids: list[str]
    workload_kind: str
    workload_id: str
    usage_subject: str
    ends_at: str | None
    at: str


@dataclass(frozen=True)
class LeaseRenewed(DomainEvent):
    """An open-ended lease's billing window settled and the next one held."""

    lease_id: int
    organization_id: int
    settled_window: int
    window: int
    window_end: str
    hold_id: str
    hold_micros: int
    billed_micros: int
    at: str


@dataclass(frozen=True)
class LeasePreemptionNoticed(DomainEvent):
    """The runtime should checkpoint: the lease ends at ``preempt_at``."""

    lease_id: int
    organization_id: int
    node_id: int
    gpu_uuids: list[str]
    for_order_id: int
    preempt_at: str
    at: str


@dataclass(frozen=True)
class _LeaseClosed(DomainEvent):
    lease_id: int
    order_id: int
    organization_id: int
    provider_id: int
    node_id: int
    billed_until: str | None
    gpu_seconds: int
    provider_micros: int
    fee_micros: int
    reason: str
    at: str


@dataclass(frozen=True)
class LeaseEnded(_LeaseClosed):
    pass


@dataclass(frozen=True)
class LeasePreempted(_LeaseClosed):
    pass


@dataclass(frozen=True)
class LeaseFailed(_LeaseClosed):
    pass


@dataclass(frozen=True)
class LeaseCancelled(_LeaseClosed):
    pass


def payload(event: DomainEvent) -> dict[str, Any]:
    return asdict(event)
