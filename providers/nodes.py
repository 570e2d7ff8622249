"""Nodes: registration and the inventory of their GPUs."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from core.errors import Conflict
from core.eventstore import DomainEvent
from core.models import Organization
from core.validation import field_error
from providers import catalog, events
from providers.health import heartbeat_interval_seconds
from providers.models import AgentKey, Gpu, Node, Site
from providers.streams import stream_append


def _gpu_summary(gpu: Gpu) -> dict[str, Any]:
    return {
        "uuid": gpu.uuid,
        "index": gpu.index,
        "name": gpu.name,
        "model": gpu.model or None,
        "memory_total_mib": gpu.memory_total_mib,
        "interconnect": gpu.interconnect,
        "mig_mode": gpu.mig_mode,
    }


@transaction.atomic
def node_register(
    *,
    organization: Organization,
    hostname: str,
    inventory: dict[str, Any],
    site_name: str | None = None,
    api_key_id: int | None = None,
    agent_version: str = "",
    inventory_source: str = "nvml",
) -> Node:
    """Register a node, or refresh the inventory of one already registered under the
    same hostname in this organization. ``inventory`` is the agent's report (see
    nvml.NodeInventory.as_dict, already validated by the API's serializer).

    An agent key (``api_key_id`` with an AgentKey row) is bound to the node it first
    registers; registering another hostname with it is a Conflict naming its node.
    Its row is locked first, so two first registrations racing bind it once."""
    now = timezone.now()
    agent_key = (
        AgentKey.objects.select_for_update(of=("self",))
        .select_related("node")
        .filter(api_key_id=api_key_id, organization=organization)
        .first()
        if api_key_id is not None
        else None
    )
    site = None
    if site_name:
        site = Site.objects.filter(organization=organization, name=site_name).first()
        if site is None:
            raise field_error(
                "site", f"your organization has no site named {site_name!r}; create it first"
            )
    reported = inventory["gpus"]
    uuids = [gpu["uuid"] for gpu in reported]
    taken = (
        Gpu.objects.filter(uuid__in=uuids)
        .exclude(node__organization=organization)
        .values_list("uuid", flat=True)
    )
    if taken:
        # Says nothing of why: that another organization holds a UUID is its business.
        refused = sorted(taken)[0]
        raise Conflict(
            f"GPU {refused} cannot be registered",
            details={"fields": {"gpus": [f"GPU {refused} cannot be registered"]}},
        )

    node = (
        Node.objects.select_for_update()
        .filter(organization=organization, hostname=hostname)
        .first()
    )
    bound = agent_key.node if agent_key is not None else None
    if bound is not None and (node is None or node.pk != bound.pk):
        raise Conflict(
            f"this agent key belongs to node {bound.pk} ({bound.hostname}), not {hostname!r}; "
            "create an agent key for each node",
            details={"node_id": bound.pk, "hostname": bound.hostname},
        )
    is_new = node is None
    if node is None:
        node = Node(organization=organization, hostname=hostname, registered_at=now)
    previous_site_id = node.site_id
    if site is not None:
        node.site = site
    node.api_key_id = api_key_id
    node.driver_version = inventory.get("driver_version", "")
    node.cuda_version = inventory.get("cuda_version", "")
    node.agent_version = agent_version
    node.inventory_source = inventory_source
    node.heartbeat_interval_seconds = heartbeat_interval_seconds()
    node.save()
    if agent_key is not None and bound is None:
        AgentKey.objects.filter(pk=agent_key.pk).update(node=node)

    existing = {gpu.uuid: gpu for gpu in Gpu.objects.select_for_update().filter(uuid__in=uuids)}
    before = {gpu.uuid: _gpu_summary(gpu) for gpu in node.gpus.filter(present=True)}
    for item in reported:
        found = catalog.model_for_nvml_name(item["name"], item["memory_total_mib"])
        gpu = existing.get(item["uuid"]) or Gpu(uuid=item["uuid"])
        gpu.node = node
        gpu.index = item["index"]
        gpu.name = item["name"]
        gpu.model = found.slug if found else ""
        gpu.memory_total_mib = item["memory_total_mib"]
        gpu.interconnect = item.get("interconnect") or (found.interconnect if found else "pcie")
        gpu.nvlink_links = item.get("nvlink_links") or 0
        gpu.pcie_generation = item.get("pcie_generation")
        gpu.pcie_width = item.get("pcie_width")
        gpu.mig_mode = item.get("mig_mode")
        gpu.present = True
        gpu.save()
    removed = sorted(set(before) - set(uuids))
    Gpu.objects.filter(node=node, uuid__in=removed).update(present=False)
    after = {gpu.uuid: _gpu_summary(gpu) for gpu in node.gpus.filter(present=True)}

    region = node.site.region if node.site is not None else None
    if is_new:
        event: DomainEvent = events.NodeRegistered(
            node_id=node.pk,
            organization_id=organization.pk,
            hostname=hostname,
            site_id=node.site_id,
            region=region,
            driver_version=node.driver_version,
            cuda_version=node.cuda_version,
            inventory_source=inventory_source,
            gpus=list(after.values()),
            at=now.isoformat(),
        )
    elif after != before or previous_site_id != node.site_id:
        event = events.NodeInventoryChanged(
            node_id=node.pk,
            organization_id=organization.pk,
            site_id=node.site_id,
            region=region,
            gpus=list(after.values()),
            removed_gpu_uuids=removed,
            at=now.isoformat(),
        )
    else:
        return node  # the same inventory again (an agent restart): nothing happened
    stream_append(
        stream_type="node", stream_id=f"node-{node.pk}", tenant_id=organization.pk, event=event
    )
    return node
