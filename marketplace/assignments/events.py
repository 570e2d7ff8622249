"""Assignment events, appended to the event store in the transaction of the change.

Stream ``assignment-<id>`` (stream type ``assignment``), tenant = the buyer. One event
per transition of the work (queued, claimed, started, stop requested, ended); log lines
and renewals are not events (they are the run's output and the claim's liveness, kept
on the assignment's rows). Times are ISO 8601 UTC strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from core.eventstore import NewEvent

ASSIGNMENT_STREAM = "assignment"


@dataclass(frozen=True)
class _Event:
    schema_version: ClassVar[int] = 1

    def to_new_event(self) -> NewEvent:
        return NewEvent(
            type=type(self).__name__, payload=asdict(self), schema_version=self.schema_version
        )


@dataclass(frozen=True)
class AssignmentQueued(_Event):
    assignment_id: int
    kind: str
    lease_id: int
    node_id: int
    organization_id: int
    at: str


@dataclass(frozen=True)
class AssignmentClaimed(_Event):
    assignment_id: int
    node_id: int
    attempt: int
    locked_until: str
    at: str


@dataclass(frozen=True)
class AssignmentStarted(_Event):
    assignment_id: int
    attempt: int
    at: str


@dataclass(frozen=True)
class AssignmentStopRequested(_Event):
    assignment_id: int
    reason: str
    at: str


@dataclass(frozen=True)
class AssignmentEnded(_Event):
    assignment_id: int
    attempt: int
    state: str  # succeeded | failed | cancelled
    exit_code: int | None
    reason: str
    at: str
