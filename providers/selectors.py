"""Reads of the supply side: querysets scoped to one organization, and small
dataclasses (reliability with its inputs, listed GPU-hours per day). Reliability
is computed in providers.reliability, beside the writes that keep it; it is
re-exported here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cache

from django.db import connection
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from core.db import server_cursor
from core.errors import NotFound
from core.models import Organization
from providers import catalog
from providers.models import (
    AgentKey,
    Gpu,
    GpuMinuteRollup,
    Node,
    Offer,
    OfferActivePeriod,
    Site,
)
from providers.reliability import Reliability, node_reliability, provider_reliability

__all__ = [
    "DayUsage",
    "Reliability",
    "agent_key_get",
    "agent_key_node_id",
    "agent_keys_for_org",
    "gpu_models_for_org",
    "listed_gpu_seconds_by_day",
    "node_get",
    "node_reliability",
    "node_telemetry",
    "nodes_for_org",
    "offer_get",
    "offers_for_org",
    "offers_listed",
    "provider_reliability",
    "site_get",
    "sites_for_org",
]


def sites_for_org(*, organization: Organization) -> QuerySet[Site]:
    return Site.objects.filter(organization=organization)


def site_get(*, organization: Organization, site_id: int) -> Site:
    site = Site.objects.filter(organization=organization, pk=site_id).first()
    if site is None:
        raise NotFound(f"site {site_id} not found")
    return site


def agent_keys_for_org(*, organization: Organization) -> QuerySet[AgentKey]:
    return AgentKey.objects.filter(organization=organization).select_related("api_key")


def agent_key_get(*, organization: Organization, agent_key_id: int) -> AgentKey:
    agent_key = agent_keys_for_org(organization=organization).filter(pk=agent_key_id).first()
    if agent_key is None:
        raise NotFound(f"agent key {agent_key_id} not found")
    return agent_key


def nodes_for_org(*, organization: Organization) -> QuerySet[Node]:
    gpus = Gpu.objects.filter(present=True).select_related("sample").order_by("index")
    return (
        Node.objects.filter(organization=organization)
        .select_related("site")
        .prefetch_related(Prefetch("gpus", queryset=gpus, to_attr="present_gpus"))
    )


def gpu_models_for_org(*, organization: Organization) -> list[str]:
    """The catalog slugs of the GPUs present on the organization's nodes."""
    return list(
        Gpu.objects.filter(node__organization=organization, present=True)
        .exclude(model="")
        .values_list("model", flat=True)
        .distinct()
        .order_by("model")
    )


def node_get(*, organization: Organization, node_id: int) -> Node:
    node = nodes_for_org(organization=organization).filter(pk=node_id).first()
    if node is None:
        raise NotFound(f"node {node_id} not found")
    return node


def node_telemetry(*, node: Node, since: datetime, until: datetime) -> QuerySet[GpuMinuteRollup]:
    return (
        GpuMinuteRollup.objects.filter(gpu__node=node, minute__gte=since, minute__lt=until)
        .select_related("gpu")
        .order_by("minute", "gpu__index")
    )


@dataclass(frozen=True, slots=True)
class TelemetryPoint:
    """One GPU over one bucket of minutes: utilization averaged over its samples, the
    highest memory use and temperature, power averaged (watts); None where no sample
    reported it."""

    start: datetime
    gpu_index: int
    utilization_pct: float | None
    memory_used_mib: int | None
    temperature_c: int | None
    power_w: float | None


def node_telemetry_history(
    *, node: Node, since: datetime, until: datetime, bucket: timedelta
) -> list[TelemetryPoint]:
    """The node's per-GPU telemetry in ``[since, until)`` folded into buckets of
    ``bucket`` (a whole number of minutes) from the minute rollups: one query. Points
    come by bucket, then GPU index; a bucket with no sample is absent."""
    step = int(bucket.total_seconds())
    folded: dict[tuple[int, int], list[int]] = {}
    for index, minute, u_samples, u_sum, memory, temperature, p_samples, p_sum in (
        GpuMinuteRollup.objects.filter(gpu__node=node, minute__gte=since, minute__lt=until)
        .order_by("minute", "gpu__index")
        .values_list(
            "gpu__index",
            "minute",
            "utilization_samples",
            "utilization_sum",
            "memory_used_max_mib",
            "temperature_max_c",
            "power_samples",
            "power_sum_mw",
        )
    ):
        slot = int((minute - since).total_seconds()) // step
        acc = folded.setdefault((slot, index), [0, 0, -1, -1000, 0, 0])
        acc[0] += u_samples
        acc[1] += u_sum
        acc[2] = max(acc[2], memory if memory is not None else -1)
        acc[3] = max(acc[3], temperature if temperature is not None else -1000)
        acc[4] += p_samples
        acc[5] += p_sum
    return [
        TelemetryPoint(
            start=since + slot * bucket,
            gpu_index=index,
            utilization_pct=round(acc[1] / acc[0], 1) if acc[0] else None,
            memory_used_mib=acc[2] if acc[2] >= 0 else None,
            temperature_c=acc[3] if acc[3] > -1000 else None,
            power_w=round(acc[5] / acc[4] / 1000, 1) if acc[4] else None,
        )
        for (slot, index), acc in sorted(folded.items())
    ]


def offers_for_org(*, organization: Organization, status: str | None = None) -> QuerySet[Offer]:
    offers = Offer.objects.filter(organization=organization)
    return offers.filter(status=status) if status else offers


def offer_get(*, organization: Organization, offer_id: int) -> Offer:
    offer = Offer.objects.filter(organization=organization, pk=offer_id).first()
    if offer is None:
        raise NotFound(f"offer {offer_id} not found")
    return offer


def offers_listed(
    *,
    gpu_model_at_least: str | None = None,
    region: str | None = None,
    min_reliability: float | None = None,
    at: datetime | None = None,
) -> QuerySet[Offer]:
    """Offers open to new leases now, on nodes that are up: what buyers and the matcher
    search. ``gpu_model_at_least``: that model or better (catalog order)."""
    at = at or timezone.now()
    offers = Offer.objects.filter(
        status=Offer.Status.ACTIVE,
        window_start__lte=at,
        node__health__in=[Node.Health.HEALTHY, Node.Health.DEGRADED],
    ).filter(Q(window_end__isnull=True) | Q(window_end__gt=at))
    if gpu_model_at_least:
        slugs = [model.slug for model in catalog.models_at_least(gpu_model_at_least)]
        offers = offers.filter(gpu_model__in=slugs)
    if region:
        offers = offers.filter(region=region)
    if min_reliability is not None:
        offers = offers.filter(node__reliability_score__gte=min_reliability)
    return offers.select_related("node")


# --- utilization ------------------------------------------------------------


@dataclass(frozen=True)
class DayUsage:
    day: date
    gpu_seconds_listed: int
    # Leased GPU-seconds come from the marketplace's leases, later.

    @property
    def gpu_hours_listed(self) -> float:
        return round(self.gpu_seconds_listed / 3600, 3)


def listed_gpu_seconds_by_day(
    *, organization: Organization, days: int, now: datetime | None = None
) -> list[DayUsage]:
    """GPU-seconds listed per UTC day for the last ``days`` days (today included): for
    each stretch an offer was active, its GPU count times the part of the stretch that
    falls inside both the day and the offer's availability window."""
    now = now or timezone.now()
    first = now.date() - timedelta(days=days - 1)
    first_start = datetime.combine(first, time.min, tzinfo=now.tzinfo)
    periods = (
        OfferActivePeriod.objects.filter(offer__organization=organization)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=first_start))
        .select_related("offer")
    )
    totals = {first + timedelta(days=n): 0 for n in range(days)}
    for period in periods:
        offer = period.offer
        start = max(period.started_at, offer.window_start, first_start)
        end = min(x for x in (period.ended_at, offer.window_end, now) if x is not None)
        cursor = start
        while cursor < end:
            day_end = datetime.combine(
                cursor.date() + timedelta(days=1), time.min, tzinfo=cursor.tzinfo
            )
            piece_end = min(day_end, end)
            if cursor.date() in totals:
                seconds = int((piece_end - cursor).total_seconds())
                totals[cursor.date()] += seconds * offer.gpu_count
            cursor = piece_end
    return [DayUsage(day=day, gpu_seconds_listed=value) for day, value in totals.items()]


def agent_key_node_id(*, api_key_id: int) -> int | None:
    """The node an agent key is bound to (None: unbound, or not an agent key).

    Every heartbeat runs this, so it is one hand-written statement, prepared once per
    connection on PostgreSQL, as core.selectors.api_key_for_secret is: the ORM's
    compiling cost several times what the database takes to answer."""
    if connection.vendor == "postgresql":
        with connection.wrap_database_errors:
            cursor = server_cursor()
            cursor.execute(_agent_key_node_sql(), [api_key_id], prepare=True)
            row = cursor.fetchone()
    else:
        with connection.cursor() as cursor:
            cursor.execute(_agent_key_node_sql(), [api_key_id])
            row = cursor.fetchone()
    return row[0] if row is not None else None


@cache
def _agent_key_node_sql() -> str:
    meta = AgentKey._meta
    node = meta.get_field("node").column
    api_key = meta.get_field("api_key").column
    return f"SELECT {node} FROM {meta.db_table} WHERE {api_key} = %s"
