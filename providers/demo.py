"""Demo supply for ``make run``: a site, a node with 8x H100 SXM registered from the
bundled inventory file, a heartbeat, and two offers (on-demand and interruptible).

Idempotent: the site and node are found by name, the heartbeat is one more
heartbeat (as a running agent would send), and offers are listed only while the
node has none that is not withdrawn.
"""

from __future__ import annotations

from pathlib import Path

from core.models import Organization
from providers import services
from providers.agent import load_inventory_file
from providers.models import Offer, Site

INVENTORY = Path(__file__).parent / "examples" / "inventory.json"


def load(*, provider: Organization) -> None:
    inventory = load_inventory_file(INVENTORY)
    site = Site.objects.filter(organization=provider, name=inventory["site"]).first()
    if site is None:
        services.site_create(
            organization=provider, name=inventory["site"], region="us-east", country="US"
        )
    node = services.node_register(
        organization=provider,
        hostname=inventory["hostname"],
        site_name=inventory["site"],
        inventory=inventory,
        inventory_source="file",
        agent_version="demo",
    )
    services.node_heartbeat_record(
        organization=provider,
        node_id=node.pk,
        samples=[
            {
                "uuid": gpu["uuid"],
                "utilization_pct": 0,
                "memory_used_mib": 0,
                "temperature_c": 34,
                "power_mw": 70_000,
                "ecc_corrected": 0,
                "ecc_uncorrected": 0,
                "xid_events": [],
            }
            for gpu in inventory["gpus"]
        ],
    )
    if Offer.objects.filter(node=node).exclude(status=Offer.Status.WITHDRAWN).exists():
        return
    services.offer_create(
        organization=provider,
        node_id=node.pk,
        gpu_model="h100-sxm-80gb",
        gpu_count=4,
        price_per_gpu_hour_micros=2_490_000,
        kind=Offer.Kind.ON_DEMAND,
        min_lease_seconds=3600,
    )
    services.offer_create(
        organization=provider,
        node_id=node.pk,
        gpu_model="h100-sxm-80gb",
        gpu_count=4,
        price_per_gpu_hour_micros=1_290_000,
        kind=Offer.Kind.INTERRUPTIBLE,
        min_lease_seconds=600,
        preemption_grace_seconds=120,
    )
