"""Reads of assignments: the buyer's runs and their logs, a node's live assignments,
and the blocking query that waits for a node's index to move."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet

from core.db import is_postgres
from core.errors import NotFound
from marketplace.assignments.models import (
    Assignment,
    AssignmentLogLine,
    NodeAssignmentIndex,
    notify_channel,
)

MAX_WAIT_SECONDS = 30
# How often a waiting query re-reads the index where no notification wakes it (SQLite,
# or with ASSIGNMENT_WAIT_NOTIFY off); on PostgreSQL it is only a safety net.
POLL_SECONDS = 0.25
NOTIFY_SAFETY_SECONDS = 5.0


# --- the buyer's runs ---------------------------------------------------------------


def runs_for_lease(*, organization: Any, lease_id: int) -> QuerySet[Assignment]:
    return Assignment.objects.filter(organization=organization, lease_id=lease_id)


def run_get(*, organization: Any, lease_id: int, run_id: int) -> Assignment:
    run = runs_for_lease(organization=organization, lease_id=lease_id).filter(pk=run_id).first()
    if run is None:
        raise NotFound(f"run {run_id} of lease {lease_id} not found")
    return run


def run_log_lines(*, run: Assignment, after: int, limit: int) -> list[AssignmentLogLine]:
    """The run's log lines with ``seq`` above ``after``, in order, at most ``limit``."""
    return list(
        AssignmentLogLine.objects.filter(assignment=run, seq__gt=after).order_by("seq")[:limit]
    )


# --- the node's side ----------------------------------------------------------------


def node_index(*, node_id: int) -> int:
    """The node's index as agents see it: from 1 (a node with no assignments yet has no
    row), so that 0, an agent's first query, always differs and answers at once."""
    found = NodeAssignmentIndex.objects.filter(node_id=node_id).values_list("index", flat=True)
    return int(found.first() or 0) + 1


def node_assignments_live(*, node_id: int) -> list[Assignment]:
    return list(
        Assignment.objects.filter(node_id=node_id, state__in=Assignment.LIVE_STATES).order_by("pk")
    )


@dataclass(frozen=True, slots=True)
class NodeAssignments:
    index: int
    changed: bool  # False: the wait ran out with the index unchanged
    assignments: list[Assignment]


def node_assignments_wait(*, node_id: int, index: int, wait_seconds: float) -> NodeAssignments:
    """The node's live assignments as soon as its index differs from ``index`` (an
    agent's first query, index 0, answers at once; so does an index from before a
    database restore, above the current one), else an empty answer after ``wait_seconds``.

    Runs in autocommit (no transaction is held while waiting, so every read sees the
    latest commit). On PostgreSQL the query LISTENs on the node's channel, and the
    transaction that moves the index NOTIFYs it at commit, so it wakes at once; the
    index is read after LISTEN, so no change can slip between the two. Elsewhere it
    re-reads the index every POLL_SECONDS (one primary-key read)."""
    deadline = time.monotonic() + min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS)
    notify = is_postgres() and settings.ASSIGNMENT_WAIT_NOTIFY
    channel = notify_channel(node_id)
    if notify:
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {channel}")
    try:
        while True:
            current = node_index(node_id=node_id)
            if current != index:
                return NodeAssignments(
                    index=current,
                    changed=True,
                    assignments=node_assignments_live(node_id=node_id),
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return NodeAssignments(index=current, changed=False, assignments=[])
            if notify:
                _wait_for_notify(min(remaining, NOTIFY_SAFETY_SECONDS))
            else:
                time.sleep(min(remaining, POLL_SECONDS))
    finally:
        if notify:
            with connection.cursor() as cursor:
                cursor.execute(f"UNLISTEN {channel}")


def _wait_for_notify(timeout: float) -> None:
    raw = connection.connection  # psycopg's: LISTEN ran on it just before
    for _ in raw.notifies(timeout=timeout, stop_after=1):
        break
