"""Hardware for dedicated endpoints (Together's ``/v2/public/inference-instance-types``),
from the market as it is now.

One instance type per GPU model × GPU count (1, 2, 4, 8) that some live on-demand
offer can hold: a replica of that type is one lease of that many GPUs of that model
on one node. Its price is the cheapest such offer's ask plus the platform fee, for an
hour of the replica, as the buyer pays it (``priceCentsPerHour`` rounds it half up
to the cent; ``price_per_hour`` is exact). Its regions are those of the offers'
sites, each with its headroom: how many more replicas fit on the GPUs of those
offers that no live lease holds now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Sum

from core.money import Money
from marketplace import services as market
from marketplace.models import Lease
from marketplace.together.clusters import TYPE_OF_MODEL
from marketplace.workloads.errors import invalid, not_found
from providers import catalog
from providers.models import Offer
from providers.selectors import offers_listed

GPU_COUNTS = (1, 2, 4, 8)
SECONDS_PER_HOUR = 3600


@dataclass(slots=True)
class InstanceType:
    gpu_model: str
    gpu_count: int
    price_micros: int  # per replica-hour, fee included
    currency: str
    headroom: dict[str, int] = field(default_factory=dict)  # region -> replicas that fit

    @property
    def id(self) -> str:
        return instance_type_id(self.gpu_model, self.gpu_count)


def instance_type_id(gpu_model: str, gpu_count: int) -> str:
    return f"{gpu_count}x_{gpu_model}"


def instance_type_parse(raw: str, *, param: str) -> tuple[str, int]:
    """(catalog GPU model, GPU count) of an instance type id: a 400 naming ``param``
    unless it is ``<count>x_<catalog model>`` with a count this market sells."""
    count, _, slug = raw.partition("x_")
    if not count.isdigit() or int(count) not in GPU_COUNTS or catalog.model_get(slug) is None:
        raise invalid(
            f"{raw!r} is not a hardware instance type: '<GPUs>x_<GPU model>' with 1, 2, 4 "
            "or 8 GPUs of a catalog model, as GET /v2/public/inference-instance-types lists",
            param=param,
        )
    return slug, int(count)


def _buyer_price(price_per_gpu_hour_micros: int, gpu_count: int, currency: str) -> int:
    cost = market.credit().gpu_time_cost(
        gpu_seconds=SECONDS_PER_HOUR * gpu_count,
        price_micros_per_gpu_hour=price_per_gpu_hour_micros,
        currency=currency,
        managed=False,
    )
    return cost.buyer_micros


def instance_types() -> list[InstanceType]:
    """Every instance type a live on-demand offer can hold now, by GPU model then count."""
    offers = list(
        offers_listed()
        .filter(kind=Offer.Kind.ON_DEMAND)
        .values("pk", "gpu_model", "gpu_count", "price_per_gpu_hour_micros", "currency", "region")
    )
    held = dict(
        Lease.objects.filter(offer_id__in=[o["pk"] for o in offers], state__in=Lease.LIVE_STATES)
        .values("offer_id")
        .annotate(held_gpus=Sum("gpu_count"))
        .values_list("offer_id", "held_gpus")
    )
    found: dict[tuple[str, int], InstanceType] = {}
    for offer in offers:
        free = max(0, offer["gpu_count"] - int(held.get(offer["pk"]) or 0))
        for count in GPU_COUNTS:
            if count > offer["gpu_count"]:
                continue
            price = _buyer_price(offer["price_per_gpu_hour_micros"], count, offer["currency"])
            key = (offer["gpu_model"], count)
            item = found.get(key)
            if item is None:
                item = found[key] = InstanceType(
                    offer["gpu_model"], count, price, offer["currency"]
                )
            item.price_micros = min(item.price_micros, price)
            region = offer["region"]
            item.headroom[region] = item.headroom.get(region, 0) + free // count
    return [found[key] for key in sorted(found)]


def instance_type_get(type_id: str) -> InstanceType:
    found = next((item for item in instance_types() if item.id == type_id), None)
    if found is None:
        raise not_found("instance type", type_id, param="id")
    return found


def instance_type_shape(item: InstanceType) -> dict[str, Any]:
    model = catalog.model_get(item.gpu_model)
    name = model.name if model else item.gpu_model
    return {
        "id": item.id,
        "name": f"{item.gpu_count}x {name}",
        "description": (
            f"{item.gpu_count} {name} GPU{'s' if item.gpu_count > 1 else ''} on one node, "
            "leased on demand from the market and billed per minute"
        ),
        "gpuCount": item.gpu_count,
        "gpuMemoryGib": model.memory_gib if model else 0,
        "gpuType": TYPE_OF_MODEL.get(item.gpu_model, item.gpu_model),
        "priceCentsPerHour": (item.price_micros + 5_000) // 10_000,
        "regions": [
            {"name": region, "headroom": {"relation": "RELATION_EQ", "value": fits}}
            for region, fits in sorted(item.headroom.items())
        ],
        # Tandem's own: the exact price, the catalog model and whether a replica fits now.
        "price_per_hour": Money(item.price_micros, item.currency).format(),
        "currency": item.currency,
        "gpu_model": item.gpu_model,
        "available": any(item.headroom.values()),
    }
