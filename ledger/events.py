"""The ledger's event types. Each journal entry and each hold change is one event
in the core event store; the tables in ledger.models are projections of them.

Payloads are plain JSON: legs are ``[account_id, "D" | "C", amount_micros]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.eventstore import DomainEvent, NewEvent, stream_id

ENTRY_STREAM = "ledger.entry"  # one stream per journal entry: version 1 only
HOLD_STREAM = "ledger.hold"  # one stream per hold: created (1), then resolved (2)

ENTRY_POSTED = "EntryPosted"
HOLD_CREATED = "HoldCreated"
HOLD_POSTED = "HoldPosted"
HOLD_VOIDED = "HoldVoided"
HOLD_EXPIRED = "HoldExpired"
HOLD_RESOLUTIONS = (HOLD_POSTED, HOLD_VOIDED, HOLD_EXPIRED)

Leg = tuple[int, str, int]


def entry_stream_id(transfer_id: str) -> str:
    return stream_id("entry", transfer_id)


def hold_stream_id(hold_id: str) -> str:
    return stream_id("hold", hold_id)


def entry_posted_payload(
    *, transfer_id: str, currency: str, kind: str, description: str, legs: Sequence[Sequence]
) -> dict[str, Any]:
    """``EntryPosted``'s payload without the event object (the batch engine makes
    thousands a second). ``legs`` go in as given: tuples or lists are the same JSON
    and the same to ``ledger.projection.apply_event``."""
    return {
        "transfer_id": transfer_id,
        "currency": currency,
        "kind": kind,
        "description": description,
        "legs": legs,
    }


@dataclass(frozen=True, slots=True)
class EntryPosted(DomainEvent):
    schema_version = 1
    transfer_id: str
    currency: str
    kind: str
    description: str
    legs: tuple[Leg, ...]

    def payload(self) -> dict[str, Any]:
        return entry_posted_payload(
            transfer_id=self.transfer_id,
            currency=self.currency,
            kind=self.kind,
            description=self.description,
            legs=[list(leg) for leg in self.legs],
        )


@dataclass(frozen=True, slots=True)
class HoldCreated(DomainEvent):
    schema_version = 1
    hold_id: str
    currency: str
    debit_account: int
    credit_account: int
    amount_micros: int
    expires_at: str  # ISO 8601, UTC
    description: str

    def payload(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "currency": self.currency,
            "debit_account": self.debit_account,
            "credit_account": self.credit_account,
            "amount_micros": self.amount_micros,
            "expires_at": self.expires_at,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class HoldResolved(DomainEvent):
    """HoldPosted (with the legs actually posted), HoldVoided or HoldExpired.
    ``released_micros`` is the whole pending amount, freed in every case."""

    schema_version = 1
    resolution: str  # the event's type: HoldPosted, HoldVoided or HoldExpired
    hold_id: str
    currency: str
    debit_account: int
    credit_account: int
    released_micros: int
    legs: tuple[Leg, ...]

    def to_new_event(self) -> NewEvent:
        return NewEvent(
            type=self.resolution, payload=self.payload(), schema_version=self.schema_version
        )

    def payload(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "currency": self.currency,
            "debit_account": self.debit_account,
            "credit_account": self.credit_account,
            "released_micros": self.released_micros,
            "legs": [list(leg) for leg in self.legs],
        }
