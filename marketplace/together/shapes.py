"""Answers in the shapes of Together's client 3.1.1 (``together.types``): WhoamiResponse,
Model, SupportedModel, Cluster, ClusterListRegionsResponse."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from core.models import Organization
from core.money import Money
from core.ports import ModelCard
from core.tenancy import Caller
from marketplace.models import Lease, Order
from marketplace.together import projects
from marketplace.together.clusters import TYPE_OF_MODEL, Cluster
from providers import catalog


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def whoami(caller: Caller) -> dict[str, Any]:
    organization = caller.organization
    return {
        "type": "project_api_key",
        "api_key": {"id": f"key_{caller.api_key_id}" if caller.api_key_id else ""},
        "organization": {
            "id": projects.organization_public_id(organization),
            "name": organization.name,
        },
        "project": {
            "id": projects.project_id(organization),
            "name": organization.name,
            "slug": projects.project_slug(organization),
        },
    }


def project_model(model: projects.ProjectModel, organization: Organization) -> dict[str, Any]:
    return {
        "id": model.id,
        "name": f"{projects.project_slug(organization)}/{model.name}",
        "organizationId": projects.organization_public_id(organization),
        "projectId": projects.project_id(organization),
        "visibility": "VISIBILITY_PRIVATE",
        "weights": {"type": "WEIGHTS_TYPE_ADAPTER" if model.adapter else "WEIGHTS_TYPE_DEFAULT"},
        "baseModel": model.base_model,
        "baseModelId": model.base_model,
        "description": f"fine-tuned from {model.base_model}",
        "created_at": iso(model.created_at),
    }


def supported_model(card: ModelCard, prices: dict[str, int], at: datetime) -> dict[str, Any]:
    """``prices``: µUSD per 1M tokens by ``prompt`` / ``completion``."""
    return {
        "id": card.name,
        "name": card.name,
        "displayName": card.name,
        "displayType": "chat",
        "baseModel": "",
        "baseModelId": "",
        "capabilities": ["CAPABILITY_CHAT"],
        "createdAt": iso(at),
        "updatedAt": iso(at),
        "deploymentProfiles": [],
        "inputModalities": ["MODALITY_TEXT"],
        "outputModalities": ["MODALITY_TEXT"],
        "products": ["PRODUCT_SERVERLESS", "PRODUCT_FINE_TUNING"],
        "publisher": card.name.split("/", 1)[0],
        "status": "SUPPORTED_MODEL_STATUS_SUPPORTED",
        "contextLength": str(card.context_length),
        "pricing": {
            "input": prices["prompt"] / 1_000_000,
            "output": prices["completion"] / 1_000_000,
        },
        "serverlessEndpoint": card.name,
    }


# --- clusters --------------------------------------------------------------------

# Lease state -> (node status, the phase of its last transition).
_NODE = {
    Lease.State.PENDING: ("Pending", "NODE_PHASE_PENDING"),
    Lease.State.ACTIVE: ("Running", "NODE_PHASE_RUNNING"),
    Lease.State.ENDED: ("Succeeded", "NODE_PHASE_SUCCEEDED"),
    Lease.State.CANCELLED: ("Succeeded", "NODE_PHASE_SUCCEEDED"),
    Lease.State.PREEMPTED: ("Failed", "NODE_PHASE_FAILED"),
    Lease.State.FAILED: ("Failed", "NODE_PHASE_FAILED"),
}


def cluster_status(cluster: Cluster) -> tuple[str, str]:
    """(status, phase) from the order's and its leases' states:

    - the order cancelled, completed or expired: ``Deleting`` (its leases have ended);
    - open, never leased: ``WaitingForDataPlaneNodes`` (queued in the book);
    - open again after a lease was preempted or failed: ``Degraded``;
    - filled, every live lease active: ``Ready``; some still pending: waiting."""
    order = cluster.order
    live = [lease for lease in cluster.leases if lease.state in Lease.LIVE_STATES]
    if order.state not in Order.LIVE_STATES:
        return "Deleting", "CLUSTER_PHASE_DELETING"
    if order.state == Order.State.OPEN:
        if cluster.leases:
            return "Degraded", "CLUSTER_PHASE_DEGRADED"
        return "WaitingForDataPlaneNodes", "CLUSTER_PHASE_QUEUED"
    if live and all(lease.state == Lease.State.ACTIVE for lease in live):
        return "Ready", "CLUSTER_PHASE_READY"
    return "WaitingForDataPlaneNodes", "CLUSTER_PHASE_SCHEDULED"


def _node(lease: Lease) -> dict[str, Any]:
    status, phase = _NODE[Lease.State(lease.state)]
    transitions = [{"phase": "NODE_PHASE_PENDING", "transition_time": iso(lease.created_at)}]
    if lease.started_at:
        transitions.append(
            {"phase": "NODE_PHASE_RUNNING", "transition_time": iso(lease.started_at)}
        )
    if lease.ended_at:
        transitions.append({"phase": phase, "transition_time": iso(lease.ended_at)})
    model = catalog.model_get(lease.gpu_model)
    return {
        # The lease stands for the node: the provider's host is not the buyer's to see.
        "node_id": f"lease-{lease.pk}",
        "host_name": f"lease-{lease.pk}",
        "instance_id": lease.usage_subject,
        "num_gpus": lease.gpu_count,
        # GPU memory of the leased GPUs; the node's RAM and CPUs are not on the market.
        "memory_gib": float((model.memory_gib if model else 0) * lease.gpu_count),
        "num_cpu_cores": 0,
        "networks": [],
        "status": status,
        "phase_transitions": transitions,
        "deleted_at": iso(lease.ended_at),
        "lease_id": lease.pk,
        "lease_state": lease.state,
        "price_per_gpu_hour": Money(lease.price_per_gpu_hour_micros, lease.currency).format(),
    }


def cluster(item: Cluster, organization: Organization) -> dict[str, Any]:
    order = item.order
    status, phase = cluster_status(item)
    live = [lease for lease in item.leases if lease.state in Lease.LIVE_STATES]
    gone = [lease for lease in item.leases if lease.state not in Lease.LIVE_STATES]
    transitions = [{"phase": "CLUSTER_PHASE_QUEUED", "transition_time": iso(order.placed_at)}]
    started = [lease.started_at for lease in item.leases if lease.started_at]
    if started:
        transitions.append({"phase": "CLUSTER_PHASE_READY", "transition_time": iso(min(started))})
    if phase not in ("CLUSTER_PHASE_QUEUED", "CLUSTER_PHASE_READY"):
        transitions.append(
            {"phase": phase, "transition_time": iso(order.closed_at or order.placed_at)}
        )
    node = live[0].node if live else (item.leases[-1].node if item.leases else None)
    model = order.gpu_models[0] if order.gpu_models else ""
    prices = sorted({lease.price_per_gpu_hour_micros for lease in live})
    preemptible = order.gpus_total if order.kind == Order.Kind.INTERRUPTIBLE else 0
    reserved = order.duration_seconds is not None
    return {
        "cluster_id": item.public_id,
        "cluster_name": item.name,
        # Together's type allows only these two; neither is installed here: the nodes
        # take commands through the lease runs API (README, "Together surface").
        "cluster_type": "KUBERNETES",
        "billing_type": "RESERVED" if reserved else "ON_DEMAND",
        "gpu_type": TYPE_OF_MODEL.get(model, model),
        "num_gpus": order.gpus_total,
        "num_reserved_gpus": order.gpus_total if reserved else 0,
        "num_capacity_pool_gpus": 0,
        "num_cpu_workers": 0,
        "desired_preemptible_gpus": preemptible,
        "allocated_preemptible_gpus": sum(lease.gpu_count for lease in live) if preemptible else 0,
        "region": order.regions[0] if order.regions else "",
        "project_id": projects.project_id(organization),
        "status": status,
        "phase_transitions": transitions,
        "gpu_worker_nodes": [_node(lease) for lease in live],
        "deleted_gpu_worker_nodes": [_node(lease) for lease in gone],
        "control_plane_nodes": [],
        "add_ons": [],
        "volumes": [],
        "kube_config": "",
        "cuda_version": node.cuda_version if node else "",
        "nvidia_driver_version": node.driver_version if node else "",
        "created_at": iso(order.placed_at),
        "first_ready_at": iso(min(started)) if started else None,
        "duration_hours": (order.duration_seconds or 0) // 3600 if reserved else None,
        "reservation_start_time": iso(order.earliest_start),
        "reservation_end_time": iso(
            order.earliest_start + _seconds(order.duration_seconds) if reserved else None
        ),
        # Tandem's own fields: the order behind the cluster and what its GPUs cost.
        "order_id": order.pk,
        "order_state": order.state,
        "price_per_gpu_hour": (
            Money(prices[0], order.currency).format() if len(prices) == 1 else None
        ),
        "limit_price_per_gpu_hour": Money(
            order.limit_price_per_gpu_hour_micros, order.currency
        ).format(),
        "currency": order.currency,
    }


def _seconds(value: int | None) -> Any:

    return timedelta(seconds=value or 0)
