"""Dramatiq actors of the supply side: take ids, load, call a service."""

from __future__ import annotations

import dramatiq

from providers import services
from providers.models import Node


@dramatiq.actor(max_retries=0)
def node_health_sweep() -> None:
    services.node_health_sweep()


@dramatiq.actor(max_retries=3)
def node_reliability_refresh(node_id: int) -> None:
    node = Node.objects.filter(pk=node_id).first()
    if node is not None:
        services.node_reliability_refresh(node=node)


@dramatiq.actor(max_retries=0)
def telemetry_prune() -> None:
    services.telemetry_prune()
