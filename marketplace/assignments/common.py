"""What the modules of assignments share: the claim's TTL, the stale-attempt error,
appending an assignment's events and moving a node's index (what its agent's
blocking query waits on), and the runtime's training record (port ``training``). The
protocol is written at the top of ``marketplace/assignments/services.py``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F

from core import ports
from core.db import is_postgres
from core.errors import Conflict
from core.eventstore import DomainEvent, event_append
from marketplace.assignments import events
from marketplace.assignments.models import (
    Assignment,
    NodeAssignmentIndex,
    notify_channel,
)


def claim_ttl() -> timedelta:
    return timedelta(seconds=settings.ASSIGNMENT_CLAIM_TTL_SECONDS)


class StaleAttempt(Conflict):
    """A node reported for an attempt that is not the assignment's current one, or
    for a run that already ended. Nothing was changed; the node must stop the work."""

    code = "stale_attempt"


# --- helpers ------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _append(assignment: Assignment, *items: DomainEvent) -> None:
    # Callers hold the assignment's row lock (or just created it): the version is stable.
    stream_id = f"assignment-{assignment.pk}"
    event_append(
        stream_type=events.ASSIGNMENT_STREAM,
        stream_id=stream_id,
        expected_version=None,
        events=[item.to_new_event() for item in items],
        tenant_id=assignment.organization_id,
    )


def _index_bump(node_id: int) -> None:
    """Move the node's index: its agent's blocking query answers. In the caller's
    transaction, so the agent never sees the index move before the change commits.
    On PostgreSQL a NOTIFY (delivered at commit) wakes waiting queries at once."""
    if not NodeAssignmentIndex.objects.filter(node_id=node_id).update(index=F("index") + 1):
        NodeAssignmentIndex.objects.get_or_create(node_id=node_id)
        NodeAssignmentIndex.objects.filter(node_id=node_id).update(index=F("index") + 1)
    if is_postgres():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [notify_channel(node_id)])


def _training() -> Any:
    return ports.get(ports.TrainingPort)
