"""The supply side's event types, appended to the event store (core.eventstore).

Streams: ``node-<id>`` (stream type ``node``) and ``offer-<id>`` (stream type
``offer``), tenant = the provider organization. The marketplace follows them.
Times are ISO 8601 UTC strings; money is integer micro-units with its currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.eventstore import DomainEvent


@dataclass(frozen=True)
class NodeRegistered(DomainEvent):
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
class NodeInventoryChanged(DomainEvent):
    node_id: int
    organization_id: int
    site_id: int | None
    region: str | None
    gpus: list[dict[str, Any]]
    removed_gpu_uuids: list[str]
    at: str


@dataclass(frozen=True)
class NodeHealthChanged(DomainEvent):
    node_id: int
    organization_id: int
    previous: str
    health: str
    reason: str
    last_heartbeat_at: str | None
    at: str


@dataclass(frozen=True)
class OfferListed(DomainEvent):
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
class OfferRepriced(DomainEvent):
    offer_id: int
    organization_id: int
    previous_price_per_gpu_hour_micros: int
    price_per_gpu_hour_micros: int
    currency: str
    applies_to: str  # always "new_leases": running leases keep the price they started at
    at: str


@dataclass(frozen=True)
class OfferPaused(DomainEvent):
    offer_id: int
    organization_id: int
    at: str


@dataclass(frozen=True)
class OfferResumed(DomainEvent):
    offer_id: int
    organization_id: int
    at: str


@dataclass(frozen=True)
class OfferWithdrawn(DomainEvent):
    offer_id: int
    organization_id: int
    forced: bool
    # Forced: running leases end here and buyers are not billed past it. Not forced:
    # None, and running leases run to the end of their own window.
    forced_end_at: str | None
    at: str
