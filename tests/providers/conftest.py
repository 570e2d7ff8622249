from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from core.models import Organization
from providers import services
from providers.models import Node, Site


def inventory(
    count: int = 8,
    *,
    prefix: str = "GPU-aaaa",
    name: str = "NVIDIA H100 80GB HBM3",
    memory_mib: int = 81559,
) -> dict[str, Any]:
    return {
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "gpus": [
            {
                "index": index,
                "uuid": f"{prefix}-{index:04d}",
                "name": name,
                "memory_total_mib": memory_mib,
                "interconnect": "nvlink",
                "nvlink_links": 18,
                "pcie_generation": 5,
                "pcie_width": 16,
                "mig_mode": False,
            }
            for index in range(count)
        ],
    }


def samples(node: Node, **values: Any) -> list[dict[str, Any]]:
    return [{"uuid": gpu.uuid, **values} for gpu in node.gpus.filter(present=True)]


def beat(
    node: Node, samples: list[dict[str, Any]], now: datetime | None = None
) -> services.HeartbeatResult:
    return services.node_heartbeat_record(
        organization=node.organization, node_id=node.pk, samples=samples, now=now
    )


@pytest.fixture
def make_node():
    def make(
        org: Organization,
        hostname: str = "node-1",
        *,
        count: int = 8,
        prefix: str | None = None,
        region: str = "us-east",
    ) -> Node:
        site = Site.objects.filter(organization=org, name=f"site-{region}").first()
        if site is None:
            site = services.site_create(
                organization=org, name=f"site-{region}", region=region, country="US"
            )
        return services.node_register(
            organization=org,
            hostname=hostname,
            site_name=site.name,
            inventory=inventory(count, prefix=prefix or f"GPU-{org.pk}-{hostname}"),
        )

    return make
