"""Metering's side of the ``usage`` port (core/ports.py): in-process producers (the
runtime) record usage here without importing metering. The records go through
``usage_record``: the same schema checks and de-duplication as the HTTP batch."""

from __future__ import annotations

from collections.abc import Sequence

from core.ports import UsageRecord
from metering.schema import SubjectIn, UsageEventIn
from metering.services import usage_record

_SUBJECT_KINDS = ("job", "deployment", "lease")


class MeteringUsage:
    def record(self, records: Sequence[UsageRecord]) -> list[str]:
        statuses: list[str | None] = [None] * len(records)
        events: list[UsageEventIn] = []
        positions: list[int] = []
        for index, record in enumerate(records):
            if record.subject_kind not in _SUBJECT_KINDS:
                statuses[index] = (
                    f"rejected: subject kind {record.subject_kind!r} is not one of "
                    f"{', '.join(_SUBJECT_KINDS)}"
                )
                continue
            events.append(
                UsageEventIn(
                    id=record.id,
                    source=record.source,
                    type=record.type,
                    subject=SubjectIn(
                        org=record.organization_id, **{record.subject_kind: record.subject_id}
                    ),
                    time=record.time,
                    quantity=record.quantity,
                    dimensions=dict(record.dimensions),
                )
            )
            positions.append(index)
        if events:
            for index, outcome in zip(positions, usage_record(events=events), strict=True):
                statuses[index] = (
                    f"rejected: {outcome.reason}"
                    if outcome.status == "rejected"
                    else outcome.status
                )
        return [status or "rejected" for status in statuses]
