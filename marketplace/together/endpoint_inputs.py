"""Reading the inputs of Together's dedicated-endpoint calls: names, update masks,
a deployment's scaling, hardware, model and placement, list pages. Each refusal is a
400 naming the field; a field this market has no counterpart for is refused, never
ignored (marketplace/together/endpoints.py says which)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from core.models import Organization
from marketplace.together import projects
from marketplace.together.instance_types import instance_type_parse
from marketplace.workloads import autoscaling as scaler
from marketplace.workloads.endpoint_names import bare_name
from marketplace.workloads.errors import invalid
from marketplace.workloads.inference import model_resolve
from providers.models import Offer

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REPLICAS_MAX = 16
INACTIVE_MINUTES = (30, 1440)  # Together's accepted range (0: never)
WINDOW = re.compile(r"^(\d{1,6})(s|m|h)$")
AUTOSCALING_FIELDS = (
    "minReplicas",
    "maxReplicas",
    "scaleToZeroWindow",
    "scaleUpWindow",
    "scaleDownWindow",
    "scalingMetrics",
    "scaleUp",
    "scaleDown",
)
TARGET_MAX = 100_000.0
POLICIES_MAX = 10
POLICY_VALUE_MAX = 10_000


def known(data: dict[str, Any], allowed: tuple[str, ...], where: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise invalid(
                f"{where}{key} is not offered on this market's dedicated endpoints",
                param=f"{where}{key}",
            )


def name_of(data: dict[str, Any], organization: Organization, *, param: str = "name") -> str:
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


def mask(update_mask: str | None, data: dict[str, Any], fields: dict[str, str]) -> set[str]:
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


def _duration(raw: Any, param: str) -> int:
    match = WINDOW.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise invalid(f"{param} must be a duration such as '300s', '30m' or '1h'", param=param)
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


def window_seconds(raw: Any, param: str) -> int:
    seconds = _duration(raw, param)
    if not 60 <= seconds <= 86_400:
        raise invalid(f"{param} must be from 1 minute to 24 hours", param=param)
    return seconds


def stabilization_seconds(raw: Any, param: str) -> int:
    seconds = _duration(raw, param)
    if seconds > scaler.WINDOW_MAX_SECONDS:
        raise invalid(f"{param} must be from 0s to 1 hour", param=param)
    return seconds


def scaling_metrics(raw: Any) -> float | None:
    """The in-flight target of ``scalingMetrics`` (None: the list is empty, the
    platform's default applies). The one metric offered is ``inflight_requests``
    with a per-replica (``METRIC_TARGET_TYPE_AVERAGE_VALUE``) target: any other name
    or type is refused, naming it, never ignored."""
    param = "autoscaling.scalingMetrics"
    if not isinstance(raw, list):
        raise invalid(f"{param} must be a list", param=param)
    if len(raw) > 1:
        raise invalid(f"{param} takes one metric ({scaler.METRIC})", param=f"{param}[1]")
    if not raw:
        return None
    metric, where = raw[0], f"{param}[0]"
    if not isinstance(metric, dict):
        raise invalid(f"{where} must be an object", param=where)
    known(metric, ("name", "type", "target", "percentile"), f"{where}.")
    if metric.get("name") != scaler.METRIC:
        raise invalid(
            f"{where}.name {metric.get('name')!r} is not offered: the autoscaler reads "
            f"{scaler.METRIC} (concurrent in-flight requests per replica, counted at the "
            "gateway)",
            param=f"{where}.name",
        )
    if metric.get("type") != scaler.TARGET_TYPE:
        raise invalid(
            f"{where}.type {metric.get('type')!r} is not offered for {scaler.METRIC}: "
            f"{scaler.TARGET_TYPE} (a target per replica)",
            param=f"{where}.type",
        )
    if metric.get("percentile") not in (None, ""):
        raise invalid(
            f"{where}.percentile applies to latency metrics, not {scaler.METRIC}",
            param=f"{where}.percentile",
        )
    target = metric.get("target")
    if (
        isinstance(target, bool)
        or not isinstance(target, int | float)
        or target != target
        or not 0 < target <= TARGET_MAX
    ):
        raise invalid(
            f"{where}.target must be a number of requests per replica above 0, at most "
            f"{TARGET_MAX:g}",
            param=f"{where}.target",
        )
    return float(target)


def scaling_rules(raw: Any, param: str) -> dict[str, Any]:
    """A ``ScalingRules`` object as given, checked: only the keys given are in the
    answer (an update keeps the others, ``rules_merge``)."""
    if not isinstance(raw, dict):
        raise invalid(f"{param} must be an object", param=param)
    known(raw, ("policies", "selectPolicy"), f"{param}.")
    rules: dict[str, Any] = {}
    if "selectPolicy" in raw:
        select = raw["selectPolicy"]
        allowed = (scaler.SELECT_MAX, scaler.SELECT_MIN, scaler.SELECT_DISABLED)
        if select is not None and select not in allowed:
            raise invalid(
                f"{param}.selectPolicy must be one of {', '.join(allowed)}",
                param=f"{param}.selectPolicy",
            )
        rules["selectPolicy"] = select
    if "policies" in raw:
        policies = raw["policies"] if raw["policies"] is not None else []
        if not isinstance(policies, list) or len(policies) > POLICIES_MAX:
            raise invalid(
                f"{param}.policies must be a list of at most {POLICIES_MAX}",
                param=f"{param}.policies",
            )
        rules["policies"] = [_policy(p, f"{param}.policies[{i}]") for i, p in enumerate(policies)]
    return rules


def _policy(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be an object", param=where)
    known(raw, ("type", "value", "periodSeconds"), f"{where}.")
    if raw.get("type") not in (scaler.PODS, scaler.PERCENT):
        raise invalid(
            f"{where}.type must be {scaler.PODS} or {scaler.PERCENT}", param=f"{where}.type"
        )
    value, period = raw.get("value"), raw.get("periodSeconds")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= POLICY_VALUE_MAX:
        raise invalid(
            f"{where}.value must be a whole number from 1 to {POLICY_VALUE_MAX}",
            param=f"{where}.value",
        )
    if (
        isinstance(period, bool)
        or not isinstance(period, int)
        or not 1 <= period <= scaler.PERIOD_MAX_SECONDS
    ):
        raise invalid(
            f"{where}.periodSeconds must be a whole number from 1 to {scaler.PERIOD_MAX_SECONDS}",
            param=f"{where}.periodSeconds",
        )
    return {"type": raw["type"], "value": value, "periodSeconds": period}


def rules_merge(current: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """Together's update rule: a non-empty ``policies`` replaces them, an empty one
    clears them; ``selectPolicy`` given (null: reset) replaces it, omitted keeps it;
    an empty object clears both (the platform's defaults)."""
    if given is None:
        return current
    if not given:
        return {}
    merged = {**current, **given}
    return {
        key: value
        for key, value in merged.items()
        if not (key == "selectPolicy" and value is None) and not (key == "policies" and not value)
    }


@dataclass(slots=True)
class Scaling:
    """What an ``autoscaling`` object (and ``inactiveTimeout``) gave; None: not given."""

    min_replicas: int | None = None
    max_replicas: int | None = None
    idle_timeout_seconds: int | None = None
    up_window_seconds: int | None = None
    down_window_seconds: int | None = None
    metrics_given: bool = False
    inflight_target: float | None = None  # None with metrics_given: the default
    up_rules: dict[str, Any] | None = None
    down_rules: dict[str, Any] | None = None


def replicas(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= REPLICAS_MAX:
        raise invalid(f"{param} must be a whole number from 0 to {REPLICAS_MAX}", param=param)
    return value


def scaling(data: dict[str, Any]) -> Scaling:
    scaling = Scaling()
    autoscaling = data.get("autoscaling")
    if autoscaling is not None:
        if not isinstance(autoscaling, dict):
            raise invalid("autoscaling must be an object", param="autoscaling")
        known(autoscaling, AUTOSCALING_FIELDS, "autoscaling.")
        if autoscaling.get("scaleUp") is not None:
            scaling.up_rules = scaling_rules(autoscaling["scaleUp"], "autoscaling.scaleUp")
        if autoscaling.get("scaleDown") is not None:
            scaling.down_rules = scaling_rules(autoscaling["scaleDown"], "autoscaling.scaleDown")
        if autoscaling.get("scaleUpWindow") is not None:
            scaling.up_window_seconds = stabilization_seconds(
                autoscaling["scaleUpWindow"], "autoscaling.scaleUpWindow"
            )
        if autoscaling.get("scaleDownWindow") is not None:
            scaling.down_window_seconds = stabilization_seconds(
                autoscaling["scaleDownWindow"], "autoscaling.scaleDownWindow"
            )
        if autoscaling.get("scalingMetrics") is not None:
            scaling.metrics_given = True
            scaling.inflight_target = scaling_metrics(autoscaling["scalingMetrics"])
        if "minReplicas" in autoscaling:
            scaling.min_replicas = replicas(autoscaling["minReplicas"], "autoscaling.minReplicas")
        if "maxReplicas" in autoscaling:
            scaling.max_replicas = replicas(autoscaling["maxReplicas"], "autoscaling.maxReplicas")
        if autoscaling.get("scaleToZeroWindow") is not None:
            scaling.idle_timeout_seconds = window_seconds(
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


def replica_bounds(low: int, high: int | None) -> tuple[int, int]:
    """``maxReplicas`` defaults to ``minReplicas``; below it is a 400."""
    high = low if high is None else high
    if high < low:
        raise invalid(
            f"autoscaling.maxReplicas ({high}) must be at least minReplicas ({low})",
            param="autoscaling.maxReplicas",
        )
    return low, high


def hardware(data: dict[str, Any], organization: Organization) -> tuple[str, int]:
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


def model(data: dict[str, Any], organization: Organization) -> tuple[str, str, str]:
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


def region(data: dict[str, Any]) -> str:
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
    known(inline, ("regions", "constraint"), "placement.inline.")
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
        listed = sorted(set(Offer.objects.values_list("region", flat=True)))
        raise invalid(
            f"region {region!r} has no capacity on this market: one of {', '.join(listed)}",
            param="placement.inline.regions[0]",
        )
    return region


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
