"""Demo demand for ``make run``: a GPU lease that ran and was settled on the ledger,
and one running now.

``load(buyer=..., provider=...)`` needs the demo's provider (its site from
providers/demo.py) and a buyer with credits. It registers a second node of the
provider (2x L40S, from an inventory like the agent's) with an offer listed three
hours ago, places an order that matched there two hours ago and ran its hour (its
hold settled: GPU time to the provider's payable, the platform fee; the offer is
withdrawn after it), then places a
standing order for an H100 that a matching round fills now. Idempotent: it does
nothing once the buyer has orders. ``endpoint(buyer=...)``: a dedicated endpoint with
one replica on the demo node's H100s.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from core.models import Organization
from marketplace import services
from marketplace.models import Order
from marketplace.services import OrderSpec
from marketplace.together import endpoints, projects
from marketplace.workloads.models import DedicatedEndpoint
from providers import services as supply
from providers.models import Offer, Site

HOSTNAME = "northlake-l40s-01"


def _inventory() -> dict:
    return {
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "gpus": [
            {
                "index": index,
                "uuid": f"GPU-5c1a9e7d-demo-l40s-{index:04d}",
                "name": "NVIDIA L40S",
                "memory_total_mib": 46068,
                "interconnect": "pcie",
                "nvlink_links": 0,
                "pcie_generation": 4,
                "pcie_width": 16,
                "mig_mode": False,
            }
            for index in range(2)
        ],
    }


def load(*, buyer: Organization, provider: Organization) -> None:
    if Order.objects.filter(organization=buyer).exists():
        return
    now = timezone.now()
    past = now - timedelta(hours=2)
    site = Site.objects.filter(organization=provider).order_by("pk").first()
    node = supply.node_register(
        organization=provider,
        hostname=HOSTNAME,
        site_name=site.name if site else None,
        inventory=_inventory(),
        inventory_source="file",
        agent_version="demo",
    )
    supply.node_heartbeat_record(
        organization=provider,
        node_id=node.pk,
        samples=[{"uuid": gpu["uuid"], "ecc_uncorrected": 0} for gpu in _inventory()["gpus"]],
    )
    if not Offer.objects.filter(node=node).exclude(status=Offer.Status.WITHDRAWN).exists():
        supply.offer_create(
            organization=provider,
            node_id=node.pk,
            gpu_model="l40s-48gb",
            gpu_count=2,
            price_per_gpu_hour_micros=900_000,
            kind=Offer.Kind.ON_DEMAND,
            window_start=now - timedelta(hours=3),
            min_lease_seconds=600,
        )

    # A lease that ran its hour two hours ago, settled when it ended.
    services.order_place(
        organization=buyer,
        spec=OrderSpec(
            gpus_per_node=1,
            gpu_models=["l40s-48gb"],
            limit_price_per_gpu_hour_micros=1_000_000,
            duration_seconds=3600,
        ),
        now=past,
    )
    services.matching_round(now=past)
    services.leases_tick(now=past + timedelta(hours=1))
    # The L40S node left the market after that hour: no agent runs it in make run,
    # so the demo's managed work (its fine-tune and its deployment) runs on the node
    # whose agent make run starts (northlake-gpu-01).
    for listed in Offer.objects.filter(node=node).exclude(status=Offer.Status.WITHDRAWN):
        supply.offer_withdraw(offer=listed)

    # A standing order for an H100 (or better), filled by the next round: running now.
    services.order_place(
        organization=buyer,
        spec=OrderSpec(
            gpus_per_node=1,
            gpu_model_at_least="h100-sxm-80gb",
            limit_price_per_gpu_hour_micros=2_600_000,
            duration_seconds=2 * 3600,
        ),
    )
    services.matching_round()


def endpoint(*, buyer: Organization) -> DedicatedEndpoint:
    """A dedicated endpoint of the buyer (Together's ``client.endpoints``):
    ``<buyer slug>/demo-assistant``, one deployment of the tiny model on one H100,
    its replica a lease of the buyer's, billed per minute, that a matching round
    fills now; its engine waits for the demo node's agent (make run). Idempotent."""
    found = DedicatedEndpoint.objects.filter(
        organization=buyer, name="demo-assistant", deleted_at__isnull=True
    ).first()
    if found is not None:
        return found
    created = endpoints.endpoint_create(organization=buyer, data={"name": "demo-assistant"})
    endpoints.deployment_create(
        endpoint=created,
        data={
            "name": "main",
            "model": "projects/public/models/tandem/tiny-llama",
            "config": f"projects/{projects.project_id(buyer)}/configs/1x_h100-sxm-80gb",
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            "limit_price_per_gpu_hour": "3.00",
        },
    )
    services.matching_round()
    return created
