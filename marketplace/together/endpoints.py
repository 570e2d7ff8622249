"""Dedicated endpoints (Together's ``client.endpoints`` and ``client.endpoints.deployments``)
on marketplace capacity.

- An **endpoint** is a name in the project (``<project slug>/<name>``) that requests
  use as ``model``; it routes them to its deployments' ready replicas in proportion
  to the weights of its ``trafficSplit``. A deployment created on an endpoint whose
  split is empty joins it with weight 1, so one deployment serves at once.
- A **deployment** serves one model (a base model or the project's fine-tuned one)
  on one hardware instance type (``config`` names it: ``projects/<pid>/configs/<type
  id>``, the ids of ``/v2/public/inference-instance-types``), in ``minReplicas``
  replicas, each a lease of its own (marketplace/workloads/dedicated.py): raising it
  orders more, lowering it ends leases, 0 stops the deployment. ``inactiveTimeout``
  (minutes) or ``autoscaling.scaleToZeroWindow`` ends the leases after that long
  without a request; the next request starts them again.
- Every write names the version it read (``etag`` in the body of an update, in the
  query of a delete, or an ``If-Match`` header): a stale one is refused, 409 (as
  Together's API answers ABORTED) or 412 for ``If-Match``; none given overwrites.
- What this market has no counterpart for (load-based autoscaling between min and
  max, scaling rules and metrics, placement profiles, compliance, per-replica
  concurrency limits, model revisions, list filters) is refused with a 400 naming the
  field, never ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.errors import ApplicationError, Conflict
from core.models import Organization
from core.money import Money, MoneyError
from marketplace.together import projects
from marketplace.together.instance_types import instance_type_parse
from marketplace.workloads import dedicated
from marketplace.workloads.endpoint_names import bare_name
from marketplace.workloads.errors import invalid, not_found
from marketplace.workloads.inference import model_resolve
from marketplace.workloads.models import DedicatedDeployment, DedicatedEndpoint, new_public_id
from providers.models import Offer

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REPLICAS_MAX = 16
INACTIVE_MINUTES = (30, 1440)  # Together's accepted range (0: never)
WINDOW = re.compile(r"^(\d{1,6})(s|m|h)$")
VISIBILITIES = tuple(DedicatedEndpoint.Visibility.values)
AUTOSCALING_UNSUPPORTED = (
    "scaleDown",
    "scaleDownWindow",
    "scaleUp",
    "scaleUpWindow",
    "scalingMetrics",
)


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


def _known(data: dict[str, Any], allowed: tuple[str, ...], where: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise invalid(
                f"{where}{key} is not offered on this market's dedicated endpoints",
                param=f"{where}{key}",
            )


def _name(data: dict[str, Any], organization: Organization, *, param: str = "name") -> str:
    raw = data.get("name")
    if not isinstance(raw, str) or not raw.strip():
        raise invalid(f"{param} is required", param=param, code="missing_required_parameter")
    name = bare_name(raw.strip(), organization)
    if not NAME.match(name):
        raise invalid(
            f"{param} must be 1 to 100 letters, digits, '.', '_' or '-' (optionally after "
            f"your project slug '{projects.project_slug(organization)}/')",
            param=param,
        )
    return name


def _mask(update_mask: str | None, data: dict[str, Any], fields: dict[str, str]) -> set[str]:
    """The fields an update changes: those in ``update_mask`` (Together's or snake
    case), else those given. A field given but outside the mask is a 400."""
    given = {fields[key] for key in data if key in fields}
    if not update_mask:
        return given
    masked = set()
    for part in update_mask.split(","):
        part = part.strip()
        if part not in fields:
            raise invalid(
                f"update_mask names {part!r}, which cannot be updated", param="update_mask"
            )
        masked.add(fields[part])
    for key in data:
        if key in fields and fields[key] not in masked:
            raise invalid(f"{key} is given but not in update_mask", param=key)
    return masked


# --- endpoints -------------------------------------------------------------------------


def endpoints_of(organization: Organization) -> QuerySet[DedicatedEndpoint]:
    return DedicatedEndpoint.objects.filter(organization=organization, deleted_at__isnull=True)


def endpoint_get(*, organization: Organization, endpoint_id: str) -> DedicatedEndpoint:
    found = endpoints_of(organization).filter(public_id=endpoint_id).first()
    if found is None:
        raise not_found("endpoint", endpoint_id, param="id")
    return found


def _visibility(data: dict[str, Any]) -> str:
    value = data.get("visibility") or DedicatedEndpoint.Visibility.PRIVATE
    if value not in VISIBILITIES:
        raise invalid(f"visibility must be one of {', '.join(VISIBILITIES)}", param="visibility")
    return str(value)


def endpoint_create(*, organization: Organization, data: dict[str, Any]) -> DedicatedEndpoint:
    _known(data, ("name", "visibility"))
    name = _name(data, organization)
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
        _known(entry, ("deploymentId", "deployment_id", "weight"), f"{where}.")
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
    _known(data, ("etag", *ENDPOINT_FIELDS))
    fields = _mask(update_mask, data, ENDPOINT_FIELDS)
    organization = endpoint.organization
    with transaction.atomic():
        locked = DedicatedEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        _check_version(locked.version, precondition, "endpoint")
        if "name" in fields:
            locked.name = _name(data, organization)
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
    return found


def _window_seconds(raw: Any, param: str) -> int:
    match = WINDOW.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise invalid(f"{param} must be a duration such as '300s', '30m' or '1h'", param=param)
    seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
    if not 60 <= seconds <= 86_400:
        raise invalid(f"{param} must be from 1 minute to 24 hours", param=param)
    return seconds


@dataclass(slots=True)
class Scaling:
    min_replicas: int | None = None
    max_replicas: int | None = None
    idle_timeout_seconds: int | None = None


def _replicas(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= REPLICAS_MAX:
        raise invalid(f"{param} must be a whole number from 0 to {REPLICAS_MAX}", param=param)
    return value


def _scaling(data: dict[str, Any]) -> Scaling:
    scaling = Scaling()
    autoscaling = data.get("autoscaling")
    if autoscaling is not None:
        if not isinstance(autoscaling, dict):
            raise invalid("autoscaling must be an object", param="autoscaling")
        for key in AUTOSCALING_UNSUPPORTED:
            if autoscaling.get(key) not in (None, [], {}):
                raise invalid(
                    f"autoscaling.{key} is not offered: a deployment keeps minReplicas "
                    "replicas leased (scaling is by minReplicas)",
                    param=f"autoscaling.{key}",
                )
        _known(
            autoscaling,
            ("minReplicas", "maxReplicas", "scaleToZeroWindow", *AUTOSCALING_UNSUPPORTED),
            "autoscaling.",
        )
        if "minReplicas" in autoscaling:
            scaling.min_replicas = _replicas(autoscaling["minReplicas"], "autoscaling.minReplicas")
        if "maxReplicas" in autoscaling:
            scaling.max_replicas = _replicas(autoscaling["maxReplicas"], "autoscaling.maxReplicas")
        if autoscaling.get("scaleToZeroWindow") is not None:
            scaling.idle_timeout_seconds = _window_seconds(
                autoscaling["scaleToZeroWindow"], "autoscaling.scaleToZeroWindow"
            )
    minutes = data.get("inactiveTimeout")
    if minutes is not None:
        low, high = INACTIVE_MINUTES
        if (
            isinstance(minutes, bool)
            or not isinstance(minutes, int)
            or not (minutes == 0 or low <= minutes <= high)
        ):
            raise invalid(
                f"inactiveTimeout must be 0 (never) or {low} to {high} minutes",
                param="inactiveTimeout",
            )
        seconds = minutes * 60
        if scaling.idle_timeout_seconds not in (None, seconds):
            raise invalid(
                "inactiveTimeout and autoscaling.scaleToZeroWindow both set the idle stop: "
                "give one, or the same time in both",
                param="inactiveTimeout",
            )
        scaling.idle_timeout_seconds = seconds
    return scaling


def _replica_bounds(low: int, high: int | None) -> tuple[int, int]:
    high = low if high is None else high
    if high != low:
        raise invalid(
            "autoscaling.maxReplicas must equal minReplicas: load-based autoscaling between "
            "them is not offered; the deployment keeps minReplicas replicas leased",
            param="autoscaling.maxReplicas",
        )
    return low, high


def _hardware(data: dict[str, Any], organization: Organization) -> tuple[str, int]:
    config = data.get("config") or data.get("configId") or data.get("hardware")
    param = next((k for k in ("config", "configId", "hardware") if data.get(k)), "config")
    if not isinstance(config, str) or not config:
        raise invalid(
            "config is required: projects/<project id>/configs/<instance type id> (a hardware "
            "instance type of GET /v2/public/inference-instance-types)",
            param="config",
            code="missing_required_parameter",
        )
    own = f"projects/{projects.project_id(organization)}/configs/"
    if config.startswith("projects/"):
        if not config.startswith(own):
            raise invalid(f"config must be under {own}", param=param)
        config = config[len(own) :]
    return instance_type_parse(config, param=param)


def _model(data: dict[str, Any], organization: Organization) -> tuple[str, str, str]:
    """(served model, base model, adapter path) of ``model`` (a resource name
    ``projects/<project>/models/<model id>``) or the deprecated ``modelId``."""
    if data.get("modelRevisionId"):
        raise invalid("model revisions are not offered: name the model", param="modelRevisionId")
    raw = data.get("model") or data.get("modelId")
    param = "model" if data.get("model") else "modelId"
    if not isinstance(raw, str) or not raw:
        raise invalid("model is required", param="model", code="missing_required_parameter")
    if raw.startswith("projects/"):
        _, _, rest = raw.partition("/models/")
        if not rest:
            raise invalid("model must be projects/<project>/models/<model id>", param=param)
        if "/revisions/" in rest:
            raise invalid("model revisions are not offered: name the model", param=param)
        raw = rest
    served = model_resolve(organization=organization, name=raw)
    if served.dedicated is not None:
        raise invalid(f"{raw} is a dedicated endpoint, not a model", param=param)
    return served.name, served.base_model, served.adapter_path


def _region(data: dict[str, Any]) -> str:
    placement = data.get("placement")
    if placement is None:
        return ""
    if not isinstance(placement, dict) or set(placement) != {"inline"}:
        raise invalid(
            "placement must be {'inline': {'regions': [...]}}: saved placement profiles are "
            "not offered",
            param="placement",
        )
    inline = placement["inline"]
    if not isinstance(inline, dict):
        raise invalid("placement.inline must be an object", param="placement.inline")
    _known(inline, ("regions", "constraint"), "placement.inline.")
    if inline.get("constraint") not in (None, "ENFORCEMENT_REQUIRED"):
        raise invalid(
            "placement.inline.constraint: only ENFORCEMENT_REQUIRED is offered (a replica's "
            "order names its region)",
            param="placement.inline.constraint",
        )
    regions = inline.get("regions") or []
    if not isinstance(regions, list) or len(regions) > 1:
        raise invalid(
            "placement.inline.regions names at most one region", param="placement.inline.regions"
        )
    if not regions:
        return ""
    region = regions[0]
    if not isinstance(region, str) or not Offer.objects.filter(region=region).exists():
        known = sorted(set(Offer.objects.values_list("region", flat=True)))
        raise invalid(
            f"region {region!r} has no capacity on this market: one of {', '.join(known)}",
            param="placement.inline.regions[0]",
        )
    return region


def _limit_micros(data: dict[str, Any]) -> int:
    raw = data.get("limit_price_per_gpu_hour")
    if raw is None:
        return int(settings.WORKLOADS_GPU_HOUR_LIMIT_MICROS)
    try:
        return Money.parse(str(raw), settings.TANDEM_CURRENCY).amount_micros
    except (MoneyError, ValueError, TypeError) as error:
        raise invalid(
            f"limit_price_per_gpu_hour must be decimal text such as '3.00': {error}",
            param="limit_price_per_gpu_hour",
        ) from error


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
    _known(data, (*DEPLOYMENT_CREATE, "maxConcurrentRequestsPerReplica"))
    name = _name(data, organization)
    if "/" in name:
        raise invalid("name must not contain '/'", param="name")
    if data.get("autoscaling") is None:
        raise invalid("autoscaling is required", param="autoscaling")
    scaling = _scaling(data)
    low, high = _replica_bounds(
        scaling.min_replicas if scaling.min_replicas is not None else 1, scaling.max_replicas
    )
    gpu_model, gpu_count = _hardware(data, organization)
    model, base_model, adapter_path = _model(data, organization)
    region = _region(data)
    now = now or timezone.now()
    limit = _limit_micros(data)
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
        dedicated.dedicated_reconcile(deployment=deployment, now=now)
        if validate_only:
            transaction.set_rollback(True)
            return None
    return deployment


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
    """Scale (``autoscaling.minReplicas``; 0 stops it), change the idle stop or the name.
    Any update also clears a failure and wakes an idle-stopped deployment: its
    replicas are ordered again, now (a 402 rolls the update back)."""
    if data.get("maxConcurrentRequestsPerReplica") not in (None, ""):
        raise invalid(
            "maxConcurrentRequestsPerReplica is not offered",
            param="maxConcurrentRequestsPerReplica",
        )
    _known(data, ("etag", "maxConcurrentRequestsPerReplica", *DEPLOYMENT_FIELDS))
    fields = _mask(update_mask, data, DEPLOYMENT_FIELDS)
    scaling = _scaling({DEPLOYMENT_FIELDS[k]: v for k, v in data.items() if k in DEPLOYMENT_FIELDS})
    organization = deployment.organization
    now = timezone.now()
    with transaction.atomic():
        locked = DedicatedDeployment.objects.select_for_update().get(pk=deployment.pk)
        _check_version(locked.version, precondition, "deployment")
        if "name" in fields:
            locked.name = _name(data, organization)
        if "autoscaling" in fields:
            low = scaling.min_replicas if scaling.min_replicas is not None else locked.min_replicas
            high = scaling.max_replicas if scaling.max_replicas is not None else None
            if high is None and scaling.min_replicas is None:
                high = locked.max_replicas
            locked.min_replicas, locked.max_replicas = _replica_bounds(low, high)
        if scaling.idle_timeout_seconds is not None:
            locked.idle_timeout_seconds = scaling.idle_timeout_seconds
        locked.failure_reason = ""
        locked.idle_stopped_at = None
        locked.last_request_at = now
        locked.version += 1
        locked.updated_at = now
        try:
            with transaction.atomic():
                locked.save()
        except IntegrityError as error:
            raise _name_taken("deployment", locked.name) from error
        dedicated.dedicated_reconcile(deployment=locked, now=now)
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
        dedicated.dedicated_reconcile(deployment=locked, now=now)
    return locked


def page_args(params: Any) -> tuple[int, str | None, str]:
    """(limit, after, order) of a list call; ``filter`` is refused rather than ignored."""
    if params.get("filter"):
        raise invalid(
            "filter is not offered: list them all (pages of up to 100) and pick", param="filter"
        )
    raw = params.get("limit") or "50"
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise invalid("limit must be a whole number from 1 to 100", param="limit")
    order = (params.get("order_by") or "created_at desc").strip()
    field, _, direction = order.partition(" ")
    if field not in ("created_at", "updated_at") or direction.strip() not in ("", "asc", "desc"):
        raise invalid(
            "order_by must be created_at or updated_at, optionally followed by asc or desc",
            param="order_by",
        )
    prefix = "" if direction.strip() == "asc" else "-"
    return int(raw), params.get("after") or None, f"{prefix}{field}"


def page(
    rows: QuerySet[Any], *, limit: int, after: str | None, order: str
) -> tuple[list[Any], str | None]:
    """A page after the row whose public id is ``after``, and the next cursor."""
    ordered = list(rows.order_by(order, f"{order[0] if order[0] == '-' else ''}pk"))
    if after:
        ids = [row.public_id for row in ordered]
        if after not in ids:
            raise invalid("after is not a cursor of this list", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    chunk = ordered[:limit]
    return chunk, chunk[-1].public_id if len(ordered) > limit else None
