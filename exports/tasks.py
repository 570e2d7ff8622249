"""Dramatiq actors of the finance exports: take an id, call a service."""

from __future__ import annotations

import dramatiq


@dramatiq.actor(queue_name="exports", max_retries=3, time_limit=2 * 3600 * 1000)
def finance_export_task(export_id: int) -> None:
    """Fill in one finance export (``POST /api/v1/finance/exports/``)."""
    # Here, not at the top: the web process imports this module at start-up (to
    # know the actor) and need not load pandas for it.
    from exports import services

    services.export_run(export_id=export_id)
