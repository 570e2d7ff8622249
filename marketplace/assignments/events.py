"""Assignment events, appended to the event store in the transaction of the change.

Stream ``assignment-<id>`` (stream type ``assignment``), tenant = the buyer. One event
per transition of the work (queued, claimed, started, stop requested, ended); log lines
and renewals are not events (they are the run's output and the claim's liveness, kept
on the assignment's rows). Times are ISO 8601 UTC strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.eventstore import DomainEvent

ASSIGNMENT_STREAM = "assignment"


@dataclass(frozen=True)
class AssignmentQueued(DomainEvent):
    assignment_id: int
    kind: str
    lease_id: int
    node_id: int
    organization_id: int
    at: str


@dataclass(frozen=True)
class AssignmentClaimed(DomainEvent):
    assignment_id: int
    node_id: int
    attempt: int
    locked_until: str
    at: str


@dataclass(frozen=True)
class AssignmentStarted(DomainEvent):
    assignment_id: int
    attempt: int
    at: str


@dataclass(frozen=True)
class AssignmentStopRequested(DomainEvent):
    assignment_id: int
    reason: str
    at: str


@dataclass(frozen=True)
class AssignmentEnded(DomainEvent):
    assignment_id: int
    attempt: int
    state: str  # succeeded | failed | cancelled
    exit_code: int | None
    reason: str
    at: str
