"""Reading a dedicated deployment's scaling from Together's calls: ``autoscaling``
(replica bounds, the scaling metric and its target, the stabilization windows, the
rate policies, the scale-to-zero window) and ``inactiveTimeout``. Each refusal is a
400 naming the field; what is not offered (a metric other than in-flight requests, a
target type other than a per-replica average) is refused, never ignored. What the
values mean: marketplace/workloads/autoscaling.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from marketplace.together.endpoint_inputs import known
from marketplace.workloads import autoscaling as scaler
from marketplace.workloads.errors import invalid

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
