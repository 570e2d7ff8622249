"""Closing a buyer's period: later usage for a closed month counts in the next open
one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from django.db import connection, transaction
from django.utils import timezone

from core.db import is_postgres
from core.errors import InvalidInput
from core.models import Organization
from metering.batches import USAGE_TABLE
from metering.models import ClosedPeriod

# --- periods ----------------------------------------------------------------


def _period_closing(period: date) -> None:
    """Check ``period`` names a month and wait for ingests in flight (``SHARE`` lock on
    the usage table), so none of them lands in a month after it is closed."""
    if period.day != 1:
        raise InvalidInput(
            "a period is named by the first day of its month", details={"field": "period"}
        )
    if is_postgres():
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {USAGE_TABLE} IN SHARE MODE")


@transaction.atomic
def usage_period_close(*, organization: Organization, period: date) -> ClosedPeriod:
    """Close a buyer's month: later usage for it counts in the next open month.
    Waits for ingests in flight (``SHARE`` lock on the usage table) so none of them
    lands in the month after it is closed. Closing twice returns the first closing."""
    _period_closing(period)
    closed, _ = ClosedPeriod.objects.get_or_create(
        organization=organization, period=period, defaults={"closed_at": timezone.now()}
    )
    return closed


@transaction.atomic
def usage_periods_close(
    *, organization_ids: Sequence[int], period: date, now: datetime | None = None
) -> int:
    """``usage_period_close`` for many buyers at once (a month's close): one lock, one
    insert. Months closed already keep their first closing. Returns how many closed now."""
    now = now or timezone.now()
    _period_closing(period)
    ids = sorted(set(organization_ids))
    if is_postgres():
        # One statement for a month's buyers (ten thousand model instances and
        # their IN lists cost a close a tenth of a second).
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {ClosedPeriod._meta.db_table} (organization_id, period, closed_at) "
                "SELECT unnest(%s::bigint[]), %s, %s "
                "ON CONFLICT (organization_id, period) DO NOTHING",
                ["{" + ",".join(map(str, ids)) + "}", period, now],
            )
            return cursor.rowcount
    closed: set[int] = set()
    for offset in range(0, len(ids), 5000):
        closed.update(
            ClosedPeriod.objects.filter(
                organization_id__in=ids[offset : offset + 5000], period=period
            ).values_list("organization_id", flat=True)
        )
    ClosedPeriod.objects.bulk_create(
        [
            ClosedPeriod(organization_id=org_id, period=period, closed_at=now)
            for org_id in ids
            if org_id not in closed
        ],
        ignore_conflicts=True,
    )
    return len(ids) - len(closed)
