"""Every write of the supply side. Keyword-only, typed, one transaction each.

Events are appended as the last step of each transaction (the event store takes its
commit-order lock at the insert and holds it to the commit).

This module is the surface other apps import; the code lives in a module per role:
``sites``, ``agent_keys``, ``nodes`` (registration, inventory), ``health`` (what
telemetry and silence say), ``heartbeats`` (the hot path), ``telemetry`` (retention),
``reliability`` and ``offers``.
"""

from __future__ import annotations

from providers.agent_keys import CreatedAgentKey, agent_key_create
from providers.health import (
    XID_DEGRADED_HOLD,
    heartbeat_interval_seconds,
    heartbeat_timeout,
    node_health_lost,
    node_health_sweep,
)
from providers.heartbeats import HeartbeatResult, node_heartbeat_record
from providers.nodes import node_register
from providers.offers import (
    MAX_GPUS_PER_NODE,
    MAX_PRICE_MICROS,
    OfferInput,
    offer_create,
    offer_pause,
    offer_reprice,
    offer_resume,
    offer_withdraw,
)
from providers.reliability import (
    RELIABILITY_WINDOW,
    node_lease_outcome_record,
    node_reliability_refresh,
)
from providers.sites import site_create
from providers.telemetry import GPU_ROLLUP_RETENTION, TELEMETRY_RETENTION, telemetry_prune

__all__ = [
    "GPU_ROLLUP_RETENTION",
    "MAX_GPUS_PER_NODE",
    "MAX_PRICE_MICROS",
    "RELIABILITY_WINDOW",
    "TELEMETRY_RETENTION",
    "XID_DEGRADED_HOLD",
    "CreatedAgentKey",
    "HeartbeatResult",
    "OfferInput",
    "agent_key_create",
    "heartbeat_interval_seconds",
    "heartbeat_timeout",
    "node_health_lost",
    "node_health_sweep",
    "node_heartbeat_record",
    "node_lease_outcome_record",
    "node_register",
    "node_reliability_refresh",
    "offer_create",
    "offer_pause",
    "offer_reprice",
    "offer_resume",
    "offer_withdraw",
    "site_create",
    "telemetry_prune",
]
