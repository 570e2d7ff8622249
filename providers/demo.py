"""Demo supply for ``make run``: a site, a node with 8x H100 SXM registered from the
bundled inventory file, a heartbeat, and two offers (on-demand and interruptible).

Idempotent: the site and node are found by name, the heartbeat is one more
heartbeat (as a running agent would send), and offers are listed only while the
node has none that is not withdrawn.

``telemetry_history`` gives the node the last hour and a half of telemetry (the
portal's history charts), once.

``agent_key_file`` gives the demo node's agent (which ``make run`` starts) its key in
a file: the key in the file is kept while it is still the node's live agent key, else
a new agent key is made, bound to the node, and written (mode 0600).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from django.utils import timezone

from core import selectors as core_selectors
from core.models import Organization
from providers import services
from providers.agent import load_inventory_file
from providers.models import AgentKey, GpuMinuteRollup, Node, Offer, Site

INVENTORY = Path(__file__).parent / "examples" / "inventory.json"
HOSTNAME = "northlake-gpu-01"  # the inventory's: the node make run's agent runs


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


HISTORY_MINUTES = 90


def telemetry_history(*, provider: Organization, now: datetime | None = None) -> int:
    """The demo node's last ``HISTORY_MINUTES`` minutes of telemetry, one heartbeat a
    minute as an NVML agent sends them: the first four GPUs busy with the running
    H100 lease (utilization and power rising and falling), the rest idle. Recorded
    once (a node that already has older minutes is left as it is); returns how many
    heartbeats were recorded."""
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=HISTORY_MINUTES)
    inventory = load_inventory_file(INVENTORY)
    node = Node.objects.get(organization=provider, hostname=inventory["hostname"])
    if GpuMinuteRollup.objects.filter(
        gpu__node=node, minute__lt=now - timedelta(minutes=5)
    ).exists():
        return 0
    for minute in range(HISTORY_MINUTES):
        wave = (minute * 7) % 30  # a saw-tooth: a training step's load, repeating
        samples = []
        for gpu in inventory["gpus"]:
            busy = gpu["index"] < 4
            samples.append(
                {
                    "uuid": gpu["uuid"],
                    "utilization_pct": 70 + wave if busy else 0,
                    "memory_used_mib": 61_000 + 100 * wave if busy else 0,
                    "temperature_c": 62 + wave // 3 if busy else 34,
                    "power_mw": (520_000 + 4_000 * wave) if busy else 70_000,
                    "ecc_corrected": 0,
                    "ecc_uncorrected": 0,
                    "xid_events": [],
                }
            )
        services.node_heartbeat_record(
            organization=provider,
            node_id=node.pk,
            samples=samples,
            now=start + timedelta(minutes=minute, seconds=30),
        )
    return HISTORY_MINUTES


def agent_key_file(*, provider: Organization, path: Path) -> Path:
    """The demo node's agent key, in ``path`` (mode 0600), for ``run_agent --key-file``."""
    inventory = load_inventory_file(INVENTORY)
    node = Node.objects.get(organization=provider, hostname=inventory["hostname"])
    if path.exists():
        found = core_selectors.api_key_for_secret(raw_key=path.read_text().strip())
        if found is not None and AgentKey.objects.filter(api_key=found, node=node).exists():
            return path
    created = services.agent_key_create(organization=provider, name=f"demo {node.hostname}")
    # Registering with the new key binds it to the node, as the agent's first call would.
    services.node_register(
        organization=provider,
        hostname=node.hostname,
        site_name=inventory["site"],
        inventory=inventory,
        api_key_id=created.agent_key.api_key_id,
        inventory_source="file",
        agent_version="demo",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(created.raw_key + "\n")
    os.chmod(path, 0o600)  # an older file may have had another mode
    return path
