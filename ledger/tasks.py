"""Dramatiq actors of the ledger: take ids (or nothing), call a service."""

from __future__ import annotations

import dramatiq

from ledger import services


@dramatiq.actor(queue_name="ledger", max_retries=3)
def holds_expire_task() -> None:
    """Release pending holds whose time ran out (also: ``manage.py sweep_holds``)."""
    services.holds_expire()
