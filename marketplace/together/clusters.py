"""GPU clusters (Together's ``client.clusters``) on marketplace orders and leases.

A cluster is a raw order of the caller's organization placed through
``marketplace.services.order_place``, marked ``workload_id = "cluster:<name>"``; its
worker nodes are the order's leases (one per leased node). Nothing is stored beside
the order, so a cluster is exactly what the order book says:

- ``gpu_type`` -> the catalog model (``GPU_TYPES``); ``num_gpus`` -> one node of that
  many GPUs up to ``GPUS_PER_NODE_MAX``, above it nodes of 8 (a gang: all or nothing);
  ``region`` -> the order's region; ``billing_type`` ON_DEMAND -> open-ended, RESERVED
  -> ``duration_days`` from ``reservation_start_time`` (or now), SCHEDULED_CAPACITY ->
  from ``reservation_start_time`` to ``reservation_end_time``; preemptible GPUs ->
  an interruptible order.
- The limit price per GPU-hour is ``limit_price_per_gpu_hour`` (decimal text) when
  given, else ``WORKLOADS_GPU_HOUR_LIMIT_MICROS``; the lease's own price is reported.
- Delete cancels the order: its leases end now, billed to now.
- An order's shape cannot change once placed, so an update that would resize or
  extend a cluster is a 409 that says so (delete and create instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.errors import Conflict
from core.models import Organization
from core.money import Money, MoneyError
from marketplace import services as market
from marketplace.models import Lease, Order
from marketplace.together.projects import project_check
from marketplace.workloads.errors import invalid, not_found
from providers import catalog
from providers.models import Node, Offer
from providers.selectors import offers_listed

WORKLOAD_PREFIX = "cluster:"
ID_PREFIX = "cl-"
GPUS_PER_NODE_MAX = 8

# Together's GPU types and the catalog model each one is on this market.
GPU_TYPES: dict[str, str] = {
    "H100_SXM": "h100-sxm-80gb",
    "H100_SXM_INF": "h100-sxm-80gb",
    "H200_SXM": "h200-141gb",
    "B200_SXM": "b200-180gb",
    "RTX_6000_PCI": "rtx-6000-ada-48gb",
    "L40_PCIE": "l40-48gb",
}
# The name reported for a catalog model (the first Together type that maps to it).
TYPE_OF_MODEL: dict[str, str] = {}
for _type, _slug in GPU_TYPES.items():
    TYPE_OF_MODEL.setdefault(_slug, _type)

BILLING_TYPES = ("ON_DEMAND", "RESERVED", "SCHEDULED_CAPACITY")
# Fields of Together's create request that this market has no counterpart for: given,
# they are refused with a 400 naming them rather than ignored.
UNSUPPORTED = (
    "acceptance_tests_params",
    "add_ons",
    "auto_scale",
    "auto_scale_max_gpus",
    "capacity_pool_id",
    "cluster_config",
    "cluster_type",
    "install_traefik",
    "num_capacity_pool_gpus",
    "oidc_config",
    "shared_volume",
    "slurm_image",
    "slurm_shm_size_gib",
    "volume_id",
)
NAME_MAX = 100


@dataclass(frozen=True, slots=True)
class Cluster:
    order: Order
    leases: list[Lease]
    name: str

    @property
    def public_id(self) -> str:
        return f"{ID_PREFIX}{self.order.pk}"


def _text(data: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise invalid(f"{name} is required", param=name, code="missing_required_parameter")
        return ""
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string", param=name)
    return value.strip()


def _whole(data: dict[str, Any], name: str, *, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{name} must be a whole number from {low} to {high}", param=name)
    return value


def _moment(data: dict[str, Any], name: str) -> datetime | None:
    raw = _text(data, name)
    if not raw:
        return None
    moment = parse_datetime(raw)
    if moment is None or timezone.is_naive(moment):
        raise invalid(f"{name} must be an ISO 8601 time with a time zone", param=name)
    return moment


def limit_micros(data: dict[str, Any]) -> int:
    raw = data.get("limit_price_per_gpu_hour")
    if raw is None:
        return int(settings.WORKLOADS_GPU_HOUR_LIMIT_MICROS)
    try:
        return Money.parse(str(raw), settings.TANDEM_CURRENCY).amount_micros
    except (MoneyError, ValueError, TypeError) as error:
        raise invalid(
            f"limit_price_per_gpu_hour must be decimal text such as '2.60': {error}",
            param="limit_price_per_gpu_hour",
        ) from error


def gpu_model_for(gpu_type: str) -> str:
    slug = GPU_TYPES.get(gpu_type)
    if slug is None:
        raise invalid(
            f"gpu_type {gpu_type!r} is not on this market: one of {', '.join(GPU_TYPES)}",
            param="gpu_type",
        )
    return slug


def _shape(num_gpus: int) -> tuple[int, int]:
    """(GPUs per node, nodes) for ``num_gpus``."""
    if num_gpus <= GPUS_PER_NODE_MAX:
        return num_gpus, 1
    if num_gpus % GPUS_PER_NODE_MAX:
        raise invalid(
            f"num_gpus above {GPUS_PER_NODE_MAX} must be a multiple of {GPUS_PER_NODE_MAX} "
            f"(nodes of {GPUS_PER_NODE_MAX} GPUs)",
            param="num_gpus",
        )
    return GPUS_PER_NODE_MAX, num_gpus // GPUS_PER_NODE_MAX


def _region_check(region: str) -> None:
    if not Offer.objects.filter(region=region).exists():
        known = sorted(set(Offer.objects.values_list("region", flat=True)))
        raise invalid(
            f"region {region!r} has no capacity on this market"
            + (f": one of {', '.join(known)}" if known else ""),
            param="region",
        )


def _timing(
    data: dict[str, Any], billing_type: str, now: datetime
) -> tuple[int | None, datetime | None]:
    """(duration in seconds or None for open-ended, earliest start)."""
    start = _moment(data, "reservation_start_time")
    end = _moment(data, "reservation_end_time")
    days = _whole(data, "duration_days", low=1, high=366)
    if billing_type == "ON_DEMAND":
        for name, given in (("duration_days", days), ("reservation_end_time", end)):
            if given is not None:
                raise invalid(f"{name} applies to RESERVED clusters only", param=name)
        return None, start
    if billing_type == "SCHEDULED_CAPACITY":
        if start is None or end is None:
            param = "reservation_start_time" if start is None else "reservation_end_time"
            raise invalid(
                "SCHEDULED_CAPACITY needs reservation_start_time and reservation_end_time",
                param=param,
            )
    elif days is not None:
        end = (start or now) + timedelta(days=days)
    if end is None:
        raise invalid("a RESERVED cluster needs duration_days", param="duration_days")
    seconds = int((end - max(start or now, now)).total_seconds())
    if seconds < 60:
        raise invalid(
            "the reservation must end at least a minute after it starts",
            param="reservation_end_time",
        )
    return seconds, start


def cluster_create(*, organization: Organization, data: dict[str, Any]) -> Cluster:
    """Place the cluster's order; everything ``order_place`` refuses (credit: 402,
    constraints: 400) comes back as it is."""
    for name in UNSUPPORTED:
        if data.get(name) not in (None, False, 0, [], {}):
            raise invalid(
                f"{name} is not offered on this market: a cluster is raw GPU nodes, "
                "reached through the lease runs API (/api/v1/leases/{id}/runs)",
                param=name,
            )
    name = _text(data, "cluster_name", required=True)
    if not name or len(name) > NAME_MAX:
        raise invalid(f"cluster_name must be 1 to {NAME_MAX} characters", param="cluster_name")
    billing_type = _text(data, "billing_type", required=True)
    if billing_type not in BILLING_TYPES:
        raise invalid(
            f"billing_type must be one of {', '.join(BILLING_TYPES)}", param="billing_type"
        )
    slug = gpu_model_for(_text(data, "gpu_type", required=True))
    num_gpus = _whole(data, "num_gpus", low=1, high=market.MAX_GPUS_PER_NODE * 8)
    if num_gpus is None:
        raise invalid("num_gpus is required", param="num_gpus", code="missing_required_parameter")
    gpus_per_node, nodes = _shape(num_gpus)
    preemptible = _whole(data, "num_preemptible_gpus", low=0, high=num_gpus) or 0
    if preemptible not in (0, num_gpus):
        raise invalid(
            "a cluster's GPUs are all preemptible (num_preemptible_gpus = num_gpus) or none",
            param="num_preemptible_gpus",
        )
    reserved = _whole(data, "num_reserved_gpus", low=0, high=num_gpus)
    if reserved not in (None, 0, num_gpus):
        raise invalid(
            "num_reserved_gpus must be 0 or num_gpus: a cluster is one order",
            param="num_reserved_gpus",
        )
    region = _text(data, "region", required=True)
    _region_check(region)
    version = _text(data, "nvidia_version_id")
    if version and version not in {v["id"] for v in driver_versions(region=region)}:
        raise invalid(
            f"nvidia_version_id {version!r} is not offered in {region}: see /v1/compute/regions",
            param="nvidia_version_id",
        )
    requested_project = _text(data, "project_id")
    if requested_project:
        project_check(organization=organization, project=requested_project)
    now = timezone.now()
    duration, start = _timing(data, billing_type, now)
    order = market.order_place(
        organization=organization,
        spec=market.OrderSpec(
            gpus_per_node=gpus_per_node,
            node_count=nodes,
            gpu_models=[slug],
            limit_price_per_gpu_hour_micros=limit_micros(data),
            kind=Order.Kind.INTERRUPTIBLE if preemptible else Order.Kind.ON_DEMAND,
            time_in_force=Order.TimeInForce.STANDING,
            regions=[region],
            duration_seconds=duration,
            earliest_start=start,
        ),
        workload_id=f"{WORKLOAD_PREFIX}{name}",
        now=now,
    )
    return Cluster(order=order, leases=[], name=name)


# --- reads ---------------------------------------------------------------------


# The columns a cluster's shape reads (``shapes.cluster``): a user's list reads a
# row per cluster, and the orders' and leases' other columns (the constraints, the
# allocation, the billing state) would be most of what it fetches and builds.
ORDER_COLUMNS = (
    "id",
    "organization_id",
    "state",
    "kind",
    "workload_kind",
    "workload_id",
    "gpu_models",
    "gpus_per_node",
    "node_count",
    "regions",
    "duration_seconds",
    "earliest_start",
    "placed_at",
    "closed_at",
    "limit_price_per_gpu_hour_micros",
    "currency",
)
LEASE_COLUMNS = (
    "id",
    "order_id",
    "state",
    "gpu_model",
    "gpu_count",
    "price_per_gpu_hour_micros",
    "currency",
    "created_at",
    "started_at",
    "ended_at",
    "node",
    "node__cuda_version",
    "node__driver_version",
)


def _clusters(organization: Organization) -> QuerySet[Order]:
    return Order.objects.filter(
        organization=organization,
        workload_kind=Order.Workload.RAW,
        workload_id__startswith=WORKLOAD_PREFIX,
    )


def _with_leases(orders: list[Order]) -> list[Cluster]:
    leases: dict[int, list[Lease]] = {order.pk: [] for order in orders}
    for lease in (
        Lease.objects.filter(order_id__in=leases)
        .select_related("node")
        .only(*LEASE_COLUMNS)
        .order_by("pk")
    ):
        leases[lease.order_id].append(lease)
    return [
        Cluster(order=o, leases=leases[o.pk], name=o.workload_id[len(WORKLOAD_PREFIX) :])
        for o in orders
    ]


def cluster_list(*, organization: Organization) -> list[Cluster]:
    """Live clusters (the order open or filled), newest first."""
    orders = (
        _clusters(organization)
        .filter(state__in=Order.LIVE_STATES)
        .only(*ORDER_COLUMNS)
        .order_by("-pk")[:1000]
    )
    return _with_leases(list(orders))


def cluster_get(*, organization: Organization, cluster_id: str) -> Cluster:
    digits = cluster_id[len(ID_PREFIX) :] if cluster_id.startswith(ID_PREFIX) else ""
    order = (
        _clusters(organization).filter(pk=int(digits)).first()
        if digits.isdigit() and len(digits) < 19
        else None
    )
    if order is None:
        raise not_found("cluster", cluster_id, param="cluster_id")
    return _with_leases([order])[0]


def cluster_delete(*, cluster: Cluster) -> Cluster:
    """Cancel the order: its live leases end now, billed to now."""
    order = (
        market.order_cancel(order=cluster.order)
        if cluster.order.state in Order.LIVE_STATES
        else cluster.order
    )
    return _with_leases([order])[0]


def cluster_update(*, cluster: Cluster, data: dict[str, Any]) -> Cluster:
    """An order's shape is fixed once placed: what would change it is a 409."""
    order = cluster.order
    for name in UNSUPPORTED:
        if data.get(name) not in (None, False, 0, [], {}):
            raise invalid(f"{name} is not offered on this market", param=name)
    changes = []
    num_gpus = data.get("num_gpus")
    if num_gpus is not None and num_gpus != order.gpus_total:
        changes.append("num_gpus")
    for name in ("num_reserved_gpus", "num_preemptible_gpus"):
        if data.get(name) is not None:
            changes.append(name)
    if data.get("reservation_end_time") is not None:
        changes.append("reservation_end_time")
    if changes:
        raise Conflict(
            f"{', '.join(changes)}: a cluster is one marketplace order, whose GPUs and "
            "length are fixed once placed; delete it and create one of the new shape",
            details={"param": changes[0], "cluster_id": cluster.public_id},
        )
    return cluster


# --- regions -------------------------------------------------------------------


def driver_versions(*, region: str) -> list[dict[str, str]]:
    """The driver and CUDA versions the region's offered nodes report."""
    pairs = (
        Node.objects.filter(offers__region=region)
        .exclude(driver_version="")
        .values_list("driver_version", "cuda_version")
        .distinct()
    )
    return [
        {
            "id": f"{region}:{driver}:{cuda or 'none'}",
            "cuda_version": cuda,
            "nvidia_driver_version": driver,
            "os": "",
        }
        for driver, cuda in sorted(set(pairs))
    ]


def regions() -> list[dict[str, Any]]:
    """Regions with offers now, each with its GPU types and driver versions."""

    found: dict[str, set[str]] = {}
    for region, model in offers_listed().values_list("region", "gpu_model").distinct():
        found.setdefault(region, set())
        if model in TYPE_OF_MODEL:
            found[region].add(TYPE_OF_MODEL[model])
    return [
        {
            "name": region,
            "supported_instance_types": sorted(types),
            "driver_versions": driver_versions(region=region),
        }
        for region, types in sorted(found.items())
    ]


def gpu_model_name(slug: str) -> str:
    model = catalog.model_get(slug)
    return model.name if model else slug
