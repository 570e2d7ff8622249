"""Dedicated endpoints (Together's ``client.endpoints`` and ``client.endpoints.deployments``)
on marketplace capacity.

- An **endpoint** is a name in the project (``<project slug>/<name>``) that requests
  use as ``model``; it routes them to its deployments' ready replicas in proportion
  to the weights of its ``trafficSplit``. A deployment created on an endpoint whose
  split is empty joins it with weight 1, so one deployment serves at once.
- A **deployment** serves one model (a base model or the project's fine-tuned one)
  on one hardware instance type (``config`` names it: ``projects/<pid>/configs/<type
  id>``, the ids of ``/v2/public/inference-instance-types``), in replicas, each a
  lease of its own (marketplace/workloads/dedicated.py), from ``minReplicas`` to
  ``maxReplicas`` as its load asks (marketplace/workloads/autoscaling.py: in-flight
  requests per replica against the ``scalingMetrics`` target, held through
  ``scaleUpWindow`` / ``scaleDownWindow``): more replicas order more leases, fewer
  end leases; both 0 stop the deployment. ``inactiveTimeout`` (minutes) or
  ``autoscaling.scaleToZeroWindow`` ends the leases after that long without a
  request; the next request starts them again.
- Every write names the version it read (``etag`` in the body of an update, in the
  query of a delete, or an ``If-Match`` header): a stale one is refused, 409 (as
  Together's API answers ABORTED) or 412 for ``If-Match``; none given overwrites.
- What this market has no counterpart for (scaling metrics other than in-flight
  requests, placement profiles, compliance, per-replica concurrency limits, model
  revisions, list filters) is refused with a 400 naming the field, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.errors import ApplicationError, Conflict
from core.models import Organization
from marketplace.together import endpoint_inputs as inputs
from marketplace.together import endpoint_scaling as scaling_inputs
from marketplace.together.clusters import limit_micros
from marketplace.workloads import autoscaling, dedicated
from marketplace.workloads.errors import invalid, not_found
from marketplace.workloads.models import DedicatedDeployment, DedicatedEndpoint, new_public_id

VISIBILITIES = tuple(DedicatedEndpoint.Visibility.values)


class PreconditionFailed(ApplicationError):
    status_code = 412
    code = "precondition_failed"


@dataclass(frozen=True, slots=True)
class Precondition:
    """The version a write names: ``etag`` from the body or query, or ``If-Match``."""

    etag: str | None
    if_match: str | None


def etag_of(version: int) -> str:
    return f"v{version}"


def _check_version(current: int, precondition: Precondition, what: str) -> None:
    if precondition.if_match and precondition.if_match.strip('"') not in (
        "*",
        etag_of(current),
    ):
        raise PreconditionFailed(
            f"If-Match {precondition.if_match} is not the {what}'s current etag "
            f"{etag_of(current)}: read it again and retry",
            details={"param": "If-Match", "etag": etag_of(current)},
        )
    if precondition.etag and precondition.etag != etag_of(current):
        error = Conflict(
            f"etag {precondition.etag} is not the {what}'s current etag {etag_of(current)}: "
            "it changed since it was read; read it again and retry",
            details={"param": "etag", "etag": etag_of(current)},
        )
        error.code = "etag_mismatch"
        raise error


# --- endpoints -------------------------------------------------------------------------


def endpoints_of(organization: Organization) -> QuerySet[DedicatedEndpoint]:
    return DedicatedEndpoint.objects.filter(organization=organization, deleted_at__isnull=True)


def endpoint_get(*, organization: Organization, endpoint_id: str) -> DedicatedEndpoint:
    found = endpoints_of(organization).filter(public_id=endpoint_id).first()
    if found is None:
        raise not_found("endpoint", endpoint_id, param="id")
    found.organization = organization  # the caller's row, not read again
    return found


def _visibility(data: dict[str, Any]) -> str:
    value = data.get("visibility") or DedicatedEndpoint.Visibility.PRIVATE
    if value not in VISIBILITIES:
        raise invalid(f"visibility must be one of {', '.join(VISIBILITIES)}", param="visibility")
    return str(value)


def endpoint_create(*, organization: Organization, data: dict[str, Any]) -> DedicatedEndpoint:
    inputs.known(data, ("name", "visibility"))
    name = inputs.name_of(data, organization)
    now = timezone.now()
    try:
        with transaction.atomic():
            return DedicatedEndpoint.objects.create(
                public_id=new_public_id("endpoint"),
                organization=organization,
                name=name,
                visibility=_visibility(data),
                created_at=now,
                updated_at=now,
            )
    except IntegrityError as error:
        raise _name_taken("endpoint", name) from error


def _name_taken(what: str, name: str) -> Conflict:
    error = Conflict(f"an {what} named {name!r} exists already", details={"param": "name"})
    error.code = "name_taken"
    return error


ENDPOINT_FIELDS = {
    "name": "name",
    "visibility": "visibility",
    "traffic_split": "traffic_split",
    "trafficSplit": "traffic_split",
}


def _traffic_split(raw: Any, endpoint: DedicatedEndpoint) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise invalid("traffic_split must be a list", param="traffic_split")
    live = set(
        DedicatedDeployment.objects.filter(endpoint=endpoint, deleted_at__isnull=True).values_list(
            "public_id", flat=True
        )
    )
    split: list[dict[str, Any]] = []
    for index, entry in enumerate(raw):
        where = f"traffic_split[{index}]"
        if not isinstance(entry, dict):
            raise invalid(f"{where} must be an object", param=where)
        inputs.known(entry, ("deploymentId", "deployment_id", "weight"), f"{where}.")
        deployment_id = entry.get("deploymentId", entry.get("deployment_id"))
        if deployment_id not in live:
            raise invalid(
                f"{where}.deploymentId {deployment_id!r} is not a deployment of this endpoint",
                param=f"{where}.deploymentId",
            )
        if any(item["deployment_id"] == deployment_id for item in split):
            raise invalid(f"{where}: {deployment_id} is listed twice", param=where)
        weight = entry.get("weight")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or weight != weight
            or not 0 <= weight <= 1e6
        ):
            raise invalid(f"{where}.weight must be a number from 0 to 1e6", param=f"{where}.weight")
        split.append({"deployment_id": deployment_id, "weight": float(weight)})
    return split


def endpoint_update(
    *,
    endpoint: DedicatedEndpoint,
    data: dict[str, Any],
    update_mask: str | None,
    precondition: Precondition,
) -> DedicatedEndpoint:
    inputs.known(data, ("etag", *ENDPOINT_FIELDS))
    fields = inputs.mask(update_mask, data, ENDPOINT_FIELDS)
    organization = endpoint.organization
    with transaction.atomic():
        locked = DedicatedEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        _check_version(locked.version, precondition, "endpoint")
        if "name" in fields:
            locked.name = inputs.name_of(data, organization)
        if "visibility" in fields:
            locked.visibility = _visibility(data)
        if "traffic_split" in fields:
            locked.traffic_split = _traffic_split(
                data.get("trafficSplit", data.get("traffic_split", [])), locked
            )
        locked.version += 1
        locked.updated_at = timezone.now()
        try:
            with transaction.atomic():
                locked.save()
        except IntegrityError as error:
            raise _name_taken("endpoint", locked.name) from error
    return locked


def endpoint_delete(*, endpoint: DedicatedEndpoint, precondition: Precondition) -> None:
    """Together's rule: its deployments are deleted first (a 409 names them)."""
    with transaction.atomic():
        locked = DedicatedEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        _check_version(locked.version, precondition, "endpoint")
        live = list(
            DedicatedDeployment.objects.filter(
                endpoint=locked, deleted_at__isnull=True
            ).values_list("public_id", flat=True)
        )
        if live:
            error = Conflict(
                f"the endpoint still has deployments ({', '.join(live)}): delete them first",
                details={"deployments": live},
            )
            error.code = "endpoint_has_deployments"
            raise error
        locked.deleted_at = locked.updated_at = timezone.now()
        locked.version += 1
        locked.save()


# --- deployments -----------------------------------------------------------------------


def deployments_of(endpoint: DedicatedEndpoint) -> QuerySet[DedicatedDeployment]:
    return DedicatedDeployment.objects.filter(endpoint=endpoint, deleted_at__isnull=True)


def deployment_get(*, endpoint: DedicatedEndpoint, deployment_id: str) -> DedicatedDeployment:
    found = deployments_of(endpoint).filter(public_id=deployment_id).first()
    if found is None:
        raise not_found("deployment", deployment_id, param="id")
    found.organization = endpoint.organization  # the endpoint's, not read again
    return found


DEPLOYMENT_CREATE = (
    "name",
    "autoscaling",
    "config",
    "configId",
    "hardware",
    "inactiveTimeout",
    "model",
    "modelId",
    "modelRevisionId",
    "placement",
    "limit_price_per_gpu_hour",
)


def deployment_create(
    *,
    endpoint: DedicatedEndpoint,
    data: dict[str, Any],
    validate_only: bool = False,
    now: datetime | None = None,
) -> DedicatedDeployment | None:
    """Create the deployment and order its replicas (one transaction: a refusal of the
    order book, such as a 402 for credit, leaves nothing behind). ``validate_only``:
    every check, the order book's included, then nothing is kept (None)."""
    organization = endpoint.organization
    if data.get("maxConcurrentRequestsPerReplica") not in (None, ""):
        raise invalid(
            "maxConcurrentRequestsPerReplica is not offered: a replica's engine batches up "
            "to its own limit",
            param="maxConcurrentRequestsPerReplica",
        )
    inputs.known(data, (*DEPLOYMENT_CREATE, "maxConcurrentRequestsPerReplica"))
    name = inputs.name_of(data, organization)
    if "/" in name:
        raise invalid("name must not contain '/'", param="name")
    if data.get("autoscaling") is None:
        raise invalid("autoscaling is required", param="autoscaling")
    scaling = scaling_inputs.scaling(data)
    low, high = scaling_inputs.replica_bounds(
        scaling.min_replicas if scaling.min_replicas is not None else 1, scaling.max_replicas
    )
    target = scaling.inflight_target or autoscaling.DEFAULT_TARGET
    gpu_model, gpu_count = inputs.hardware(data, organization)
    model, base_model, adapter_path = inputs.model(data, organization)
    region = inputs.region(data)
    now = now or timezone.now()
    limit = limit_micros(data)
    with transaction.atomic():
        locked = DedicatedEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        try:
            with transaction.atomic():
                deployment = DedicatedDeployment.objects.create(
                    public_id=new_public_id("deployment"),
                    organization=organization,
                    endpoint=locked,
                    name=name,
                    model=model,
                    base_model=base_model,
                    adapter_path=adapter_path,
                    gpu_model=gpu_model,
                    gpu_count=gpu_count,
                    region=region,
                    min_replicas=low,
                    max_replicas=high,
                    desired_replicas=low,
                    inflight_target=target,
                    inflight_target_given=scaling.inflight_target is not None,
                    scale_up_window_seconds=_or(
                        scaling.up_window_seconds, autoscaling.DEFAULT_UP_WINDOW_SECONDS
                    ),
                    scale_down_window_seconds=_or(
                        scaling.down_window_seconds, autoscaling.DEFAULT_DOWN_WINDOW_SECONDS
                    ),
                    scale_up_rules=scaling_inputs.rules_merge({}, scaling.up_rules),
                    scale_down_rules=scaling_inputs.rules_merge({}, scaling.down_rules),
                    idle_timeout_seconds=scaling.idle_timeout_seconds or 0,
                    limit_price_per_gpu_hour_micros=limit,
                    last_request_at=now,
                    created_at=now,
                    updated_at=now,
                )
        except IntegrityError as error:
            raise _name_taken("deployment", name) from error
        if not locked.traffic_split:
            locked.traffic_split = [{"deployment_id": deployment.public_id, "weight": 1.0}]
            locked.version += 1
            locked.updated_at = now
            locked.save()
        dedicated.dedicated_reconcile(deployment=deployment, now=now, held=True)
        if validate_only:
            transaction.set_rollback(True)
            return None
    return deployment


def _or(given: int | None, default: int) -> int:
    return default if given is None else given


DEPLOYMENT_FIELDS = {
    "autoscaling": "autoscaling",
    "inactiveTimeout": "inactiveTimeout",
    "inactive_timeout": "inactiveTimeout",
    "name": "name",
}


def deployment_update(
    *,
    deployment: DedicatedDeployment,
    data: dict[str, Any],
    update_mask: str | None,
    precondition: Precondition,
) -> DedicatedDeployment:
    """Scale (``autoscaling``: its bounds, windows and metric; both bounds 0 stop it),
    change the idle stop or the name. What ``autoscaling`` leaves out keeps its value
    (Together's rule); ``maxReplicas`` left out of a deployment pinned at one count
    (min = max) moves with ``minReplicas``. Any update also clears a failure and
    wakes an idle-stopped deployment: its replicas are ordered again, now (a 402
    rolls the update back)."""
    if data.get("maxConcurrentRequestsPerReplica") not in (None, ""):
        raise invalid(
            "maxConcurrentRequestsPerReplica is not offered",
            param="maxConcurrentRequestsPerReplica",
        )
    inputs.known(data, ("etag", "maxConcurrentRequestsPerReplica", *DEPLOYMENT_FIELDS))
    fields = inputs.mask(update_mask, data, DEPLOYMENT_FIELDS)
    scaling = scaling_inputs.scaling(
        {DEPLOYMENT_FIELDS[k]: v for k, v in data.items() if k in DEPLOYMENT_FIELDS}
    )
    organization = deployment.organization
    now = timezone.now()
    with transaction.atomic():
        locked = DedicatedDeployment.objects.select_for_update().get(pk=deployment.pk)
        locked.organization = organization  # its replicas' orders are placed for it
        _check_version(locked.version, precondition, "deployment")
        if "name" in fields:
            locked.name = inputs.name_of(data, organization)
        if "autoscaling" in fields:
            low = scaling.min_replicas if scaling.min_replicas is not None else locked.min_replicas
            high = scaling.max_replicas
            if high is None:
                pinned = locked.min_replicas == locked.max_replicas
                high = low if pinned and scaling.min_replicas is not None else locked.max_replicas
            locked.min_replicas, locked.max_replicas = scaling_inputs.replica_bounds(low, high)
            locked.desired_replicas = min(high, max(low, locked.desired_replicas))
            locked.scale_up_window_seconds = _or(
                scaling.up_window_seconds, locked.scale_up_window_seconds
            )
            locked.scale_down_window_seconds = _or(
                scaling.down_window_seconds, locked.scale_down_window_seconds
            )
            locked.scale_up_rules = scaling_inputs.rules_merge(
                locked.scale_up_rules, scaling.up_rules
            )
            locked.scale_down_rules = scaling_inputs.rules_merge(
                locked.scale_down_rules, scaling.down_rules
            )
            if scaling.metrics_given:
                locked.inflight_target = scaling.inflight_target or autoscaling.DEFAULT_TARGET
                locked.inflight_target_given = scaling.inflight_target is not None
        if scaling.idle_timeout_seconds is not None:
            locked.idle_timeout_seconds = scaling.idle_timeout_seconds
        locked.failure_reason = locked.scaling_error = ""
        locked.idle_stopped_at = None
        locked.last_request_at = now
        locked.version += 1
        locked.updated_at = now
        try:
            with transaction.atomic():
                locked.save()
        except IntegrityError as error:
            raise _name_taken("deployment", locked.name) from error
        dedicated.dedicated_reconcile(deployment=locked, now=now, held=True)
    return locked


def deployment_delete(
    *, deployment: DedicatedDeployment, precondition: Precondition
) -> DedicatedDeployment:
    """Its replicas' leases end (billed to their last whole minute) and it leaves the
    endpoint's traffic split."""
    now = timezone.now()
    with transaction.atomic():
        endpoint = DedicatedEndpoint.objects.select_for_update().get(pk=deployment.endpoint_id)
        locked = DedicatedDeployment.objects.select_for_update().get(pk=deployment.pk)
        _check_version(locked.version, precondition, "deployment")
        locked.deleted_at = locked.updated_at = now
        locked.version += 1
        locked.save()
        endpoint.traffic_split = [
            entry
            for entry in endpoint.traffic_split
            if entry.get("deployment_id") != locked.public_id
        ]
        endpoint.version += 1
        endpoint.updated_at = now
        endpoint.save()
        dedicated.dedicated_reconcile(deployment=locked, now=now, held=True)
    return locked
