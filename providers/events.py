"""The supply side's event types, appended to the event store (core.eventstore).

Streams: ``node-<id>`` (stream type ``node``) and ``offer-<id>`` (stream type
``offer``), tenant = the provider organization. The marketplace follows them.
Times are ISO 8601 UTC strings; money is integer micro-units with its currency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from core.eventstore import NewEvent


@dataclass(frozen=True)
class _Event:
    schema_version: ClassVar[int] = 1

    def to_new_event(self) -> NewEvent:
        return NewEvent(
            type=type(self).__name__, payload=asdict(self), schema_version=self.schema_version
        )

    @staticmethod
    def payload_of(event: Any) -> dict[str, Any]:
        return dict(event.payload)


@dataclass(frozen=True)
class NodeRegistered(_Event):
    node_id: int
    organization_id: int
    hostname: str
    site_id: int | None
    region: str | None
    driver_version: str
    cuda_version: str
    inventory_source: str
    gpus: list[dict[str, Any]]  # uuid, index, name, model, memory_total_mib, interconnect
    at: str


@dataclass(frozen=True)
class NodeInventoryChanged(_Event):
    node_id: int
    organization_id: int
    site_id: int | None
    region: str | None
    gpus: list[dict[str, Any]]
    removed_gpu_uuids: list[str]
    at: str


@dataclass(frozen=True)
class NodeHealthChanged(_Event):
    node_id: int
    organization_id: int
    previous: str
    health: str
    reason: str
    last_heartbeat_at: str | None
    at: str


@dataclass(frozen=True)
class OfferListed(_Event):
    offer_id: int
    organization_id: int
    node_id: int
    gpu_model: str
    gpu_count: int
    price_per_gpu_hour_micros: int
    currency: str
    window_start: str
    window_end: str | None
    min_lease_seconds: int
    max_lease_seconds: int | None
    kind: str
    preemption_grace_seconds: int | None
    region: str
    at: str


@dataclass(frozen=True)
class OfferRepriced(_Event):
    offer_id: int
    organization_id: int
    previous_price_per_gpu_hour_micros: int
    price_per_gpu_hour_micros: int
    currency: str
    applies_to: str  # always "new_leases": running leases keep the price they started at
    at: str


@dataclass(frozen=True)
class OfferPaused(_Event):
    offer_id: int
    organization_id: int
    at: str


@dataclass(frozen=True)
class OfferResumed(_Event):
    offer_id: int
    organization_id: int
    at: str


@dataclass(frozen=True)
class OfferWithdrawn(_Event):
    offer_id: int
    organization_id: int
    forced: bool
    # Forced: running leases end here and buyers are not billed past it. Not forced:
    # None, and running leases run to the end of their own window.
    forced_end_at: str | None
    at: str
