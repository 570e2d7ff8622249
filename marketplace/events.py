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
from typing import Any, ClassVar

from core.eventstore import NewEvent

ORDER_STREAM = "order"
LEASE_STREAM = "lease"


@dataclass(frozen=True)
class _Event:
    schema_version: ClassVar[int] = 1

    def to_new_event(self) -> NewEvent:
        return NewEvent(
            type=type(self).__name__, payload=asdict(self), schema_version=self.schema_version
        )


# --- orders -----------------------------------------------------------------


@dataclass(frozen=True)
class OrderPlaced(_Event):
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
class OrderFilled(_Event):
    order_id: int
    organization_id: int
    lease_ids: list[int]
    at: str


@dataclass(frozen=True)
class OrderRequeued(_Event):
    """A standing order back in the book after its lease was preempted or failed."""

    order_id: int
    organization_id: int
    reason: str
    remaining_seconds: int | None
    reserved_micros: int
    at: str


@dataclass(frozen=True)
class OrderCompleted(_Event):
    order_id: int
    organization_id: int
    at: str


@dataclass(frozen=True)
class OrderCancelled(_Event):
    order_id: int
    organization_id: int
    released_micros: int
    at: str


@dataclass(frozen=True)
class OrderExpired(_Event):
    order_id: int
    organization_id: int
    reason: str
    at: str


# --- leases -----------------------------------------------------------------


@dataclass(frozen=True)
class LeaseAllocated(_Event):
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
class LeaseStarted(_Event):
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
class LeaseRenewed(_Event):
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
class LeasePreemptionNoticed(_Event):
    """The runtime should checkpoint: the lease ends at ``preempt_at``."""

    lease_id: int
    organization_id: int
    node_id: int
    gpu_uuids: list[str]
    for_order_id: int
    preempt_at: str
    at: str


@dataclass(frozen=True)
class _LeaseClosed(_Event):
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


def payload(event: _Event) -> dict[str, Any]:
    return asdict(event)
