"""Metering's event types in the core event store.

``UsageRecorded`` is appended once per ingested batch, in the transaction that stores
the batch's rows, and names those rows: the rating follower (billing.rating) follows
these events, so a usage row is rated when, and only when, its batch has committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

USAGE_STREAM = "metering.usage"
USAGE_RECORDED = "UsageRecorded"


def usage_stream_id(first_usage_id: int) -> str:
    # One stream per batch, named after its first row: unique because row ids are.
    return f"usage:{first_usage_id}"


def id_ranges(ids: list[int]) -> list[list[int]]:
    """Sorted ids as inclusive ``[first, last]`` runs: a batch's ids are mostly one run."""
    runs: list[list[int]] = []
    for value in sorted(ids):
        if runs and runs[-1][1] == value - 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return runs


@dataclass(frozen=True, slots=True)
class UsageRecorded:
    schema_version = 1
    usage_ranges: tuple[tuple[int, int], ...]  # inclusive runs of metering_usageevent ids
    count: int
    producer_org_id: int

    def payload(self) -> dict[str, Any]:
        return {
            "usage_ranges": [list(run) for run in self.usage_ranges],
            "count": self.count,
            "producer_org_id": self.producer_org_id,
        }
