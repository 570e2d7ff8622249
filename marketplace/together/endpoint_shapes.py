"""Dedicated endpoints and their deployments in the shapes of Together's client 3.1.1
(``together.types``: Endpoint, EndpointDeploymentSummary, EndpointDeployment with its
DeploymentStatus), with Tandem's own fields beside them: each replica's lease and
what it costs.

A deployment's state, from its replicas (inference deployments on leases):

- ``FAILED``: a replica could not be ordered or leased (``failure_reason``) and none
  serves;
- ``STOPPED``: it wants no replica (``maxReplicas`` 0, scaled to zero, or idle past
  its inactive timeout) and has none; ``STOPPING`` while one is still live;
- ``PROVISIONING``: none ready yet (waiting for GPUs, or the engine loading on them);
- ``SCALING``: some ready, fewer than wanted, or more live than wanted (the
  autoscaler ending some); ``READY``: as many ready as wanted.

``desiredReplicas`` is the autoscaler's count (marketplace/workloads/autoscaling.py);
the message says why the autoscaler could not reach it when the order book refused
a replica, and Tandem's own ``autoscaler`` block shows the load it last sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from core.models import Organization
from core.money import Money
from marketplace.models import Lease
from marketplace.together import projects
from marketplace.together.endpoints import etag_of
from marketplace.together.instance_types import instance_type_id
from marketplace.together.shapes import iso
from marketplace.workloads import autoscaling
from marketplace.workloads import ports as external
from marketplace.workloads.dedicated import replicas_wanted
from marketplace.workloads.endpoint_names import (
    deployment_qualified_name,
    endpoint_qualified_name,
)
from marketplace.workloads.models import DedicatedDeployment, DedicatedEndpoint, Deployment


@dataclass(frozen=True, slots=True)
class DeploymentView:
    deployment: DedicatedDeployment
    replicas: list[Deployment]  # live ones
    leases: dict[str, Lease]  # by the replica's lease_ref
    ready: int

    @property
    def wanted(self) -> int:
        return replicas_wanted(self.deployment)


def _serving(replica: Deployment) -> bool:
    if replica.status == Deployment.Status.READY:
        return True
    if replica.status != Deployment.Status.STARTING or not replica.lease_ref:
        return False
    serving = external.serving_state(deployment_id=replica.public_id)
    return serving is not None and serving.serving


def deployment_views(deployments: list[DedicatedDeployment]) -> list[DeploymentView]:
    replicas: dict[int, list[Deployment]] = {d.pk: [] for d in deployments}
    for replica in (
        Deployment.objects.filter(dedicated_id__in=list(replicas))
        .exclude(status=Deployment.Status.STOPPED)
        .order_by("pk")
    ):
        replicas[replica.dedicated_id].append(replica)  # type: ignore[index]
    refs = [int(r.lease_ref) for rs in replicas.values() for r in rs if r.lease_ref]
    leases = {
        str(lease.pk): lease for lease in Lease.objects.filter(pk__in=refs).select_related("offer")
    }
    return [
        DeploymentView(
            deployment=d,
            replicas=replicas[d.pk],
            leases=leases,
            ready=sum(1 for r in replicas[d.pk] if _serving(r)),
        )
        for d in deployments
    ]


def deployment_state(view: DeploymentView) -> tuple[str, str]:
    deployment = view.deployment
    live, wanted = len(view.replicas), view.wanted
    if deployment.failure_reason and not view.ready:
        return "DEPLOYMENT_STATE_FAILED", deployment.failure_reason
    if wanted == 0:
        if live:
            return "DEPLOYMENT_STATE_STOPPING", f"ending {live} replica lease(s)"
        if deployment.idle_stopped_at is not None:
            return (
                "DEPLOYMENT_STATE_STOPPED",
                f"stopped at {iso(deployment.idle_stopped_at)} after "
                f"{deployment.idle_timeout_seconds // 60} minutes without a request; the next "
                "request starts it again",
            )
        if deployment.max_replicas:
            return (
                "DEPLOYMENT_STATE_STOPPED",
                "scaled to zero (minReplicas 0, no load): the next request starts a replica",
            )
        return "DEPLOYMENT_STATE_STOPPED", "maxReplicas is 0: no replica is leased"
    refused = f"; {deployment.scaling_error}" if deployment.scaling_error else ""
    if not view.ready:
        leased = sum(1 for r in view.replicas if r.lease_ref)
        if leased:
            return (
                "DEPLOYMENT_STATE_PROVISIONING",
                f"{leased} of {wanted} replica(s) leased, loading the model{refused}",
            )
        return (
            "DEPLOYMENT_STATE_PROVISIONING",
            f"waiting for GPUs for {wanted} replica(s){refused}",
        )
    if view.ready < wanted:
        return "DEPLOYMENT_STATE_SCALING", f"{view.ready} of {wanted} replicas ready{refused}"
    if live > wanted:
        return (
            "DEPLOYMENT_STATE_SCALING",
            f"scaling down to {wanted} replica(s), {live} live",
        )
    return "DEPLOYMENT_STATE_READY", f"{view.ready} replica(s) ready"


def _autoscaling(deployment: DedicatedDeployment) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "minReplicas": deployment.min_replicas,
        "maxReplicas": deployment.max_replicas,
        "scaleUpWindow": f"{deployment.scale_up_window_seconds}s",
        "scaleDownWindow": f"{deployment.scale_down_window_seconds}s",
        # The metric in use, the platform's default included (given or not).
        "scalingMetrics": [
            {
                "name": autoscaling.METRIC,
                "type": autoscaling.TARGET_TYPE,
                "target": deployment.inflight_target,
            }
        ],
    }
    for key, rules in (
        ("scaleUp", deployment.scale_up_rules),
        ("scaleDown", deployment.scale_down_rules),
    ):
        if rules:
            shape[key] = rules
    if deployment.idle_timeout_seconds:
        shape["scaleToZeroWindow"] = f"{deployment.idle_timeout_seconds}s"
    return shape


def _share(view: DeploymentView, endpoint: DedicatedEndpoint, capacity: float) -> float:
    weight = next(
        (
            float(entry.get("weight") or 0)
            for entry in endpoint.traffic_split
            if entry.get("deployment_id") == view.deployment.public_id
        ),
        0.0,
    )
    return round(weight * view.ready / capacity, 6) if capacity else 0.0


def capacity(views: list[DeploymentView], endpoint: DedicatedEndpoint) -> float:
    weights = {e.get("deployment_id"): float(e.get("weight") or 0) for e in endpoint.traffic_split}
    return sum(weights.get(v.deployment.public_id, 0.0) * v.ready for v in views)


def _model_resource(deployment: DedicatedDeployment, organization: Organization) -> str:
    owner = projects.project_id(organization) if deployment.adapter_path else "public"
    return f"projects/{owner}/models/{deployment.model}"


def deployment_summary(
    view: DeploymentView,
    endpoint: DedicatedEndpoint,
    organization: Organization,
    capacity: float,
) -> dict[str, Any]:
    deployment = view.deployment
    state, _ = deployment_state(view)
    return {
        "id": deployment.public_id,
        "autoscaling": _autoscaling(deployment),
        "createdAt": iso(deployment.created_at),
        "estimatedEffectiveTrafficShare": _share(view, endpoint, capacity),
        "model": _model_resource(deployment, organization),
        "modelId": deployment.model,
        "name": deployment_qualified_name(deployment, endpoint, organization),
        "state": state,
        "trafficMode": "TRAFFIC_MODE_LIVE",
        "desiredReplicas": view.wanted,
        "hardware": instance_type_id(deployment.gpu_model, deployment.gpu_count),
        "readyReplicas": view.ready,
    }


def _replica(replica: Deployment, lease: Lease | None) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "replica_id": replica.public_id,
        "status": replica.status,
        "order_id": int(replica.order_ref) if replica.order_ref else None,
        "lease_id": lease.pk if lease else None,
        "lease_state": lease.state if lease else None,
        "region": "",
        "price_per_gpu_hour": None,
    }
    if lease is not None:
        shape["region"] = lease.offer.region
        shape["price_per_gpu_hour"] = Money(
            lease.price_per_gpu_hour_micros, lease.currency
        ).format()
    return shape


def deployment_full(
    view: DeploymentView,
    endpoint: DedicatedEndpoint,
    organization: Organization,
    capacity: float,
) -> dict[str, Any]:
    deployment = view.deployment
    state, message = deployment_state(view)
    leases = [view.leases.get(r.lease_ref) for r in view.replicas]
    regions: dict[str, list[int]] = {}
    for replica, lease in zip(view.replicas, leases, strict=True):
        if lease is None:
            continue
        counts = regions.setdefault(lease.offer.region, [0, 0])
        counts[0] += 1
        counts[1] += 1 if _serving(replica) else 0
    project = projects.project_id(organization)
    hardware = instance_type_id(deployment.gpu_model, deployment.gpu_count)
    return {
        **deployment_summary(view, endpoint, organization, capacity),
        "config": f"projects/{project}/configs/{hardware}",
        "configId": hardware,
        "endpointId": endpoint.public_id,
        "etag": etag_of(deployment.version),
        "modelRevisionId": "",
        "projectId": project,
        "status": {
            "state": state,
            "message": message,
            "readyReplicas": view.ready,
            "scheduledReplicas": sum(1 for lease in leases if lease is not None),
            "details": {
                "region": [
                    {"region": region, "scheduledReplicas": placed, "readyReplicas": ready}
                    for region, (placed, ready) in sorted(regions.items())
                ]
            },
        },
        "updatedAt": iso(deployment.updated_at),
        "inactiveTimeout": deployment.idle_timeout_seconds // 60,
        "placement": (
            {"inline": {"regions": [deployment.region], "constraint": "ENFORCEMENT_REQUIRED"}}
            if deployment.region
            else None
        ),
        # Tandem's own: each replica's order and lease, and the cap on its price.
        "replicas": [
            _replica(replica, lease) for replica, lease in zip(view.replicas, leases, strict=True)
        ],
        "autoscaler": {
            "inflight_requests": deployment.inflight_sampled,
            "target_per_replica": deployment.inflight_target,
            "target_is_default": not deployment.inflight_target_given,
            "desired_replicas": view.wanted,
            "error": deployment.scaling_error or None,
        },
        "limit_price_per_gpu_hour": Money(
            deployment.limit_price_per_gpu_hour_micros, settings.TANDEM_CURRENCY
        ).format(),
        "billing": "per whole minute of each replica's lease, at the lease price plus fee",
    }


def endpoint_shape(
    endpoint: DedicatedEndpoint,
    organization: Organization,
    views: list[DeploymentView],
) -> dict[str, Any]:
    share = capacity(views, endpoint)
    return {
        "id": endpoint.public_id,
        "createdAt": iso(endpoint.created_at),
        "deployments": [deployment_summary(view, endpoint, organization, share) for view in views],
        "endpointType": "ENDPOINT_TYPE_DEDICATED",
        "etag": etag_of(endpoint.version),
        "name": endpoint_qualified_name(endpoint, organization),
        "projectId": projects.project_id(organization),
        "trafficSplit": [
            {"deploymentId": entry["deployment_id"], "weight": entry["weight"]}
            for entry in endpoint.traffic_split
        ],
        "updatedAt": iso(endpoint.updated_at),
        "visibility": endpoint.visibility,
    }


def endpoints_shapes(
    endpoints: list[DedicatedEndpoint], organization: Organization
) -> list[dict[str, Any]]:
    """Many endpoints with their deployments, in a fixed number of queries (plus one
    per starting replica with a lease, to see whether its engine loaded)."""
    deployments = list(
        DedicatedDeployment.objects.filter(
            endpoint__in=endpoints, deleted_at__isnull=True
        ).order_by("pk")
    )
    views = deployment_views(deployments)
    by_endpoint: dict[int, list[DeploymentView]] = {e.pk: [] for e in endpoints}
    for view in views:
        by_endpoint[view.deployment.endpoint_id].append(view)
    return [endpoint_shape(e, organization, by_endpoint[e.pk]) for e in endpoints]


def deployment_shape(
    deployment: DedicatedDeployment, endpoint: DedicatedEndpoint, organization: Organization
) -> dict[str, Any]:
    (view,) = deployment_views([deployment])
    if not view.ready:  # no serving replica, no share of the traffic (a new one)
        return deployment_full(view, endpoint, organization, 0.0)
    # Its share of the traffic needs the ready replicas of the deployments in the split.
    routed = [e.get("deployment_id") for e in endpoint.traffic_split if e.get("weight")]
    siblings = list(
        DedicatedDeployment.objects.filter(
            endpoint=endpoint, deleted_at__isnull=True, public_id__in=routed
        )
        .exclude(pk=deployment.pk)
        .order_by("pk")
    )
    views = [*deployment_views(siblings), view]
    return deployment_full(view, endpoint, organization, capacity(views, endpoint))
