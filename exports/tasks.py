"""Dramatiq actors of the finance exports: take an id, call a service."""

from __future__ import annotations

import dramatiq

from exports import services


@dramatiq.actor(
    actor_name=services.FINANCE_EXPORT_TASK,
    queue_name="exports",
    max_retries=3,
    time_limit=2 * 3600 * 1000,
)
def finance_export_task(export_id: int) -> None:
    """Fill in one finance export (``POST /api/v1/finance/exports/``)."""
    services.export_run(export_id=export_id)
