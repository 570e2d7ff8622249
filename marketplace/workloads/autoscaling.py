"""Load-based autoscaling of a dedicated deployment between ``minReplicas`` and
``maxReplicas`` (Together's ``DeploymentAutoscaling``), run by the matching loop's
tick (dedicated.dedicated_tick) before it reconciles the replicas.

- **The metric** is the one Together's platform uses when ``scalingMetrics`` is
  omitted: concurrent in-flight requests per replica (``inflight_requests``, a
  ``METRIC_TARGET_TYPE_AVERAGE_VALUE`` target). The gateway counts each request to a
  replica from its submission to its end (marketplace/workloads/inflight.py); the
  tick reads the deployment's total.
- **The recommendation** is ``ceil(in flight / target)`` replicas, clamped to
  ``[minReplicas, maxReplicas]``: the fewest replicas that hold the load at or under
  the target each.
- **The default target** is DEFAULT_TARGET, 16: a replica's engine decodes up to
  MAX_BATCH (16) requests together in one forward pass per token
  (runtime/inference.py), so up to 16 in flight cost each of them little more than
  one; a 17th waits for a whole batch to finish before its first token. Sixteen per
  replica is the load a replica serves at full batch without queueing.
- **Stabilization** (``scaleUpWindow``, default 0: at once; ``scaleDownWindow``,
  default 5m, as Together's client documents): the deployment grows only to a count
  that every recommendation during the up window reached, and shrinks only to one
  that none during the down window exceeded (Kubernetes' HPA rule). The history of
  recommendations is kept on the deployment's row (``recommendations``: each value
  with the time it began, only the changes, pruned to the longer window), so it
  survives restarts and is shared by every process. A window longer than the
  history known (a new deployment, a restart of the count) holds the count where it
  is until the history covers it.
- **Rate policies** (``scaleUp`` / ``scaleDown``: ``ScalingRules``), applied after
  stabilization and before the bounds, as Kubernetes' HPA applies its behavior: a
  ``SCALING_POLICY_TYPE_PODS`` policy lets the count move by ``value`` replicas from
  where it stood ``periodSeconds`` ago (the autoscaler's own changes since then count
  against it: ``scale_events``); a ``SCALING_POLICY_TYPE_PERCENT`` one by ``value``
  percent of that count (rounded up when growing, down when shrinking).
  ``SCALING_POLICY_SELECT_MAX`` (the default) takes the policy that allows the
  largest change, ``…_MIN`` the smallest, ``…_DISABLED`` holds that direction. With no
  policy the count moves to the stabilized recommendation in one step (this
  platform's default). A percent policy cannot grow a count of 0: the first replica
  of a deployment scaled to zero is started by a request (dedicated.replica_acquire).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from marketplace.workloads.inference import MAX_BATCH
from marketplace.workloads.models import DedicatedDeployment

METRIC = "inflight_requests"
TARGET_TYPE = "METRIC_TARGET_TYPE_AVERAGE_VALUE"
DEFAULT_TARGET = float(MAX_BATCH)
DEFAULT_UP_WINDOW_SECONDS = 0
DEFAULT_DOWN_WINDOW_SECONDS = 300
WINDOW_MAX_SECONDS = 3600  # Kubernetes' bound on a stabilization window
PERIOD_MAX_SECONDS = 1800  # Together's bound on a policy's periodSeconds
PODS = "SCALING_POLICY_TYPE_PODS"
PERCENT = "SCALING_POLICY_TYPE_PERCENT"
SELECT_MAX = "SCALING_POLICY_SELECT_MAX"
SELECT_MIN = "SCALING_POLICY_SELECT_MIN"
SELECT_DISABLED = "SCALING_POLICY_SELECT_DISABLED"


def autoscaled(deployment: DedicatedDeployment) -> bool:
    """Whether the load moves it: a range to move in, and serving (not deleted,
    stopped for being idle, or failed)."""
    return (
        deployment.max_replicas > deployment.min_replicas
        and deployment.deleted_at is None
        and deployment.idle_stopped_at is None
        and not deployment.failure_reason
    )


def recommendation(*, load: int, target: float, low: int, high: int) -> int:
    return min(high, max(low, math.ceil(max(load, 0) / target)))


History = list[tuple[datetime, int]]


def history_read(raw: object) -> History:
    if not isinstance(raw, list):
        return []
    return [(datetime.fromisoformat(at), int(n)) for at, n in raw]


def history_write(history: History) -> list[list[object]]:
    return [[at.isoformat(), n] for at, n in history]


def history_record(history: History, *, now: datetime, value: int, keep_seconds: int) -> History:
    """``value`` recommended from ``now`` on: recorded when it changes; what ended
    before the last ``keep_seconds`` dropped, but the value in effect at their start."""
    if not history or history[-1][1] != value:
        history = [*history, (now, value)]
    since = now - timedelta(seconds=keep_seconds)
    older = [i for i, (at, _) in enumerate(history) if at <= since]
    return history[older[-1] :] if older else history


def _held(history: History, *, since: datetime, current: int) -> list[int]:
    """Every recommendation in effect at some moment from ``since`` to now; the
    current count stands in for the one at ``since`` when the history starts later."""
    values = [n for at, n in history if at > since]
    before = [n for at, n in history if at <= since]
    values.append(before[-1] if before else current)
    return values


def stabilized(
    history: History,
    *,
    now: datetime,
    current: int,
    up_window_seconds: int,
    down_window_seconds: int,
) -> int:
    """The replica count the recommendations allow: up to the lowest of the up
    window, down to the highest of the down window, else where it is."""
    up = min(_held(history, since=now - timedelta(seconds=up_window_seconds), current=current))
    if up > current:
        return up
    down = max(_held(history, since=now - timedelta(seconds=down_window_seconds), current=current))
    return down if down < current else current


def _changed_since(events: History, since: datetime, *, up: bool) -> int:
    return sum(
        abs(delta) for at, delta in events if at > since and (delta > 0 if up else delta < 0)
    )


def rate_limited(
    desired: int, *, current: int, rules: dict[str, Any], events: History, now: datetime
) -> int:
    """``desired`` as far as the direction's rules let the count move now (the module
    doc); ``events``: the autoscaler's changes, ``(time, signed change)``."""
    if desired == current:
        return current
    up = desired > current
    select = rules.get("selectPolicy") or SELECT_MAX
    if select == SELECT_DISABLED:
        return current
    policies = rules.get("policies") or []
    if not policies:
        return desired
    limits = []
    for policy in policies:
        since = now - timedelta(seconds=int(policy["periodSeconds"]))
        start = (
            current
            - _changed_since(events, since, up=True)
            + _changed_since(events, since, up=False)
        )
        value = int(policy["value"])
        if policy["type"] == PODS:
            limits.append(start + value if up else start - value)
        elif up:
            limits.append(math.ceil(start * (100 + value) / 100))
        else:
            limits.append(math.floor(start * (100 - value) / 100))
    if up:
        # MAX: the policy allowing the most growth; never below where it stands.
        limit = max(limits) if select == SELECT_MAX else min(limits)
        return min(desired, max(limit, current))
    limit = min(limits) if select == SELECT_MAX else max(limits)
    return max(desired, min(limit, current))


def autoscale(*, deployment: DedicatedDeployment, load: int, now: datetime) -> int:
    """Record the load and the recommendation it makes, move ``desired_replicas``
    as the windows allow; returns it. One transaction, the deployment's row locked
    (the API's updates take the same lock)."""
    with transaction.atomic():
        locked = DedicatedDeployment.objects.select_for_update().get(pk=deployment.pk)
        low, high = locked.min_replicas, locked.max_replicas
        current = min(high, max(low, locked.desired_replicas))
        if not autoscaled(locked):
            return current
        value = recommendation(load=load, target=locked.inflight_target, low=low, high=high)
        history = history_record(
            [(at, min(high, max(low, n))) for at, n in history_read(locked.recommendations)],
            now=now,
            value=value,
            keep_seconds=max(locked.scale_up_window_seconds, locked.scale_down_window_seconds),
        )
        wanted = stabilized(
            history,
            now=now,
            current=current,
            up_window_seconds=locked.scale_up_window_seconds,
            down_window_seconds=locked.scale_down_window_seconds,
        )
        events = [
            (at, delta)
            for at, delta in history_read(locked.scale_events)
            if at > now - timedelta(seconds=PERIOD_MAX_SECONDS)
        ]
        rules = locked.scale_up_rules if wanted > current else locked.scale_down_rules
        desired = min(
            high,
            max(low, rate_limited(wanted, current=current, rules=rules, events=events, now=now)),
        )
        if desired != current:
            events.append((now, desired - current))
        locked.recommendations = history_write(history)
        locked.scale_events = history_write(events)
        locked.inflight_sampled = max(load, 0)
        locked.desired_replicas = desired
        locked.save(
            update_fields=[
                "recommendations",
                "scale_events",
                "inflight_sampled",
                "desired_replicas",
            ]
        )
        deployment.desired_replicas = desired
        return desired
