"""Reads of metering: the rows a batch's UsageRecorded event names (for rating), the
raw events a tenant may list, and meters.

Who sees what is decided here, from the caller: a buyer sees usage whose subject is
its own organization; a provider sees the GPU-seconds it delivered (usage whose
``dimensions.provider`` is itself); operator finance staff see everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Q, QuerySet

from core.db import as_utc
from core.tenancy import Caller
from metering.models import UsageEvent

USAGE_TABLE = UsageEvent._meta.db_table


# --- rating -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageForRating:
    id: int
    buyer_id: int
    type: str
    quantity: int
    occurred_at: datetime
    dimensions: dict[str, object]  # only what pricing reads


_RATED_DIMENSIONS = (
    "model",
    "training_type",
    "provider",
    "lease_price_micros_per_hour",
    "service_tier",  # "batch": tokens of a batch, at the price book's batch discount
)


def usage_for_rating(*, ranges: Sequence[Sequence[int]]) -> list[UsageForRating]:
    """The rows with ids in the inclusive ``[first, last]`` runs, in id order. Only
    the dimensions pricing reads are extracted (in SQL, so no JSON is parsed here)."""
    if not ranges:
        return []
    where = " OR ".join(["id BETWEEN %s AND %s"] * len(ranges))
    params = [bound for run in ranges for bound in (run[0], run[1])]
    extracted = ", ".join(f"dimensions ->> '{name}'" for name in _RATED_DIMENSIONS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, buyer_id, type, quantity, occurred_at, {extracted} "
            f"FROM {USAGE_TABLE} WHERE {where} ORDER BY id",
            params,
        )
        rows = cursor.fetchall()
    found = []
    for row_id, buyer_id, usage_type, quantity, occurred_at, *dims in rows:
        found.append(
            UsageForRating(
                id=row_id,
                buyer_id=buyer_id,
                type=usage_type,
                quantity=quantity,
                occurred_at=as_utc(occurred_at),
                dimensions={
                    name: value
                    for name, value in zip(_RATED_DIMENSIONS, dims, strict=True)
                    if value is not None
                },
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class UsageRatingSummary:
    """Rows of one batch that rate alike: the same buyer, type and priced dimensions
    (and, for a lease's GPU-seconds, the same lease). Their quantities come each on
    its own (in no particular order), so each can still be rated alone."""

    batch: int  # index into the batches asked for
    buyer_id: int
    type: str
    dimensions: dict[str, object]  # only what pricing reads
    lease: str | None  # the lease subject of gpu.seconds rows
    first_id: int
    first_at: datetime
    last_at: datetime
    quantities: list[int]


def usage_rating_summaries(
    *, batches: Sequence[Sequence[Sequence[int]]]
) -> list[UsageRatingSummary]:
    """Per batch (its inclusive ``[first, last]`` id runs), its rows summed up in SQL
    by what rating needs: one round trip for many batches, and no Python object per
    row. PostgreSQL only (``array_agg``)."""
    runs = [(index, run[0], run[1]) for index, ranges in enumerate(batches) for run in ranges]
    if not runs:
        return []
    # A row's run is found with width_bucket over the runs' bounds ([first, last + 1)
    # pairs, in order: an odd bucket is inside a run), so the work per row does not
    # grow with the number of batches; the index reads the span of them all.
    runs.sort(key=lambda run: run[1])
    bounds = [bound for _, lo, hi in runs for bound in (lo, hi + 1)]
    extracted = ", ".join(f"u.dimensions ->> '{name}'" for name in _RATED_DIMENSIONS)
    keys = ", ".join(str(n) for n in range(1, 5 + len(_RATED_DIMENSIONS)))
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH r AS (SELECT %s::bigint[] AS bounds, %s::int[] AS batch) "
            f"SELECT r.batch[(width_bucket(u.id, r.bounds) + 1) / 2], u.buyer_id, u.type, "
            f"{extracted}, "
            "CASE WHEN u.type = 'gpu.seconds' AND u.subject_kind = 'lease' "
            "THEN u.subject_id END, "
            "min(u.id), min(u.occurred_at), max(u.occurred_at), array_agg(u.quantity) "
            f"FROM r, {USAGE_TABLE} u WHERE u.id BETWEEN %s AND %s "
            "AND width_bucket(u.id, r.bounds) %% 2 = 1 "
            f"GROUP BY {keys} ORDER BY 1, min(u.id)",
            [bounds, [batch for batch, _, _ in runs], bounds[0], bounds[-1] - 1],
        )
        rows = cursor.fetchall()
    width = len(_RATED_DIMENSIONS)
    return [
        UsageRatingSummary(
            batch=row[0],
            buyer_id=row[1],
            type=row[2],
            dimensions={
                name: value
                for name, value in zip(_RATED_DIMENSIONS, row[3 : 3 + width], strict=True)
                if value is not None
            },
            lease=row[3 + width],
            first_id=row[4 + width],
            first_at=row[5 + width],
            last_at=row[6 + width],
            quantities=row[7 + width],
        )
        for row in rows
    ]


# --- tenants' reads ---------------------------------------------------------


def usage_visible_to(*, caller: Caller) -> QuerySet[UsageEvent]:
    if caller.is_platform_finance:
        return UsageEvent.objects.all()
    return UsageEvent.objects.filter(buyer_id=caller.organization.pk)


def gpu_seconds_delivered_by(*, caller: Caller) -> QuerySet[UsageEvent]:
    """GPU-seconds the caller's organization delivered as a provider."""
    return UsageEvent.objects.filter(type="gpu.seconds").filter(
        Q(dimensions__provider=caller.organization.pk)
    )


def usage_list(
    *,
    caller: Caller,
    usage_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[UsageEvent]:
    query = usage_visible_to(caller=caller)
    if usage_type is not None:
        query = query.filter(type=usage_type)
    if since is not None:
        query = query.filter(occurred_at__gte=since)
    if until is not None:
        query = query.filter(occurred_at__lt=until)
    return query


# --- meters -----------------------------------------------------------------

AGGREGATIONS = ("sum", "count", "max", "unique_count")
WINDOWS = ("hour", "day", "month")
# What usage may be grouped by: columns, or any dimension by name.
GROUP_COLUMNS = {
    "type": "type",
    "subject": "subject_id",
    "subject_kind": "subject_kind",
    "buyer": "buyer_id",
    "period": "period",
}
MAX_METER_ROWS = 5000


@dataclass(frozen=True, slots=True)
class MeterRow:
    window_start: datetime
    group: dict[str, object]
    value: int


def meter(
    *,
    usage: QuerySet[UsageEvent],
    aggregation: str,
    window: str,
    group_by: Sequence[str] = (),
    unique_of: str = "subject",
) -> list[MeterRow]:
    """Aggregate ``usage`` (already scoped and filtered) per window and group:
    sum / max of quantity, count of events, or count of distinct ``unique_of``.
    At most ``MAX_METER_ROWS`` rows, plus one more when there are more (the caller
    says so and drops it)."""
    from django.db.models import Count, F, Max, Sum
    from django.db.models.fields.json import KeyTextTransform
    from django.db.models.functions import Trunc

    def column(name: str):
        if name in GROUP_COLUMNS:
            return F(GROUP_COLUMNS[name])
        return KeyTextTransform(name, "dimensions")

    annotations = {f"g_{name}": column(name) for name in group_by}
    value = {
        "sum": Sum("quantity"),
        "count": Count("id"),
        "max": Max("quantity"),
        "unique_count": Count(column(unique_of), distinct=True),
    }[aggregation]
    keys = ["window_start", *annotations]
    rows = (
        usage.annotate(window_start=Trunc("occurred_at", window), **annotations)
        .values(*keys)
        .annotate(value=value)
        .order_by(*keys)[: MAX_METER_ROWS + 1]
    )
    return [
        MeterRow(
            window_start=row["window_start"],
            group={name: row[f"g_{name}"] for name in group_by},
            value=row["value"] or 0,
        )
        for row in rows
    ]
