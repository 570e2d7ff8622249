"""Appending the supply side's events: each aggregate is a stream of its own
(``node-<id>``, ``offer-<id>``), appended as the last step of the transaction that
changed it, under its row lock."""

from __future__ import annotations

from datetime import datetime

from core.eventstore import DomainEvent, event_append


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def stream_append(*, stream_type: str, stream_id: str, tenant_id: int, event: DomainEvent) -> None:
    # Callers hold the row lock of the aggregate, so the version read here is stable.
    event_append(
        stream_type=stream_type,
        stream_id=stream_id,
        expected_version=None,
        events=[event.to_new_event()],
        tenant_id=tenant_id,
    )
