"""Dedicated deployments' replicas on the market: placing them, ending them, routing
requests to them.

A replica is an inference ``Deployment`` (``dedicated`` set) on a raw lease of its
own: a standing, open-ended, on-demand order for the deployment's GPUs, marked
``workload_id = "endpoint:<replica id>"``. Being raw, the order reserves the buyer's
credit and its lease is billed to the buyer by its holds at the lease price plus the
platform fee, per whole minute (``managed.whole_minutes_until``); the replica's
tokens are not metered (inference.inference_usage_record). From there a replica
lives as any deployment does: the workloads follower records its lease and queues
its engine on the leased node (a serve assignment); the node reports the engine
loaded and the replica is ready; requests reach it through the relay.

``dedicated_reconcile`` keeps each deployment at its wanted number of replicas:
``desired_replicas`` (``min_replicas`` unless the autoscaler moved it towards
``max_replicas``: marketplace/workloads/autoscaling.py), or none once deleted or
stopped for being idle. More wanted: an order each; fewer: the newest replicas
(those not ready first) end, their leases settled to the last whole minute. A
replica lost under it (its node failed) is replaced at the next reconcile. A
replica within ``min_replicas`` that cannot be ordered, or whose order left the book
unfilled, fails the deployment (``failure_reason``) rather than being ordered again
and again; an update of the deployment clears it and tries again. One the
autoscaler wanted above ``min_replicas`` does not: the refusal is recorded
(``scaling_error``, shown in the deployment's status), the replicas it has keep
serving, and the next pass tries again. ``dedicated_tick`` (each pass of the
matching loop) marks replicas ready, applies the inactive timeout, samples the
in-flight requests for the autoscaler and reconciles.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import ApplicationError, InsufficientFunds
from marketplace import services as market
from marketplace.models import Order
from marketplace.workloads import ports as external
from marketplace.workloads.autoscaling import autoscale, autoscaled, history_write
from marketplace.workloads.inference import (
    RETRY_AFTER_SECONDS,
    ModelUnavailable,
    ServedModel,
    deployment_start,
    deployment_stop,
)
from marketplace.workloads.inflight import inflight_counts
from marketplace.workloads.managed import order_live
from marketplace.workloads.models import DedicatedDeployment, Deployment, new_public_id

WORKLOAD_PREFIX = "endpoint:"

logger = logging.getLogger(__name__)


def replicas_live(deployment: DedicatedDeployment) -> list[Deployment]:
    return list(
        Deployment.objects.filter(dedicated=deployment)
        .exclude(status=Deployment.Status.STOPPED)
        .order_by("pk")
    )


def replicas_wanted(deployment: DedicatedDeployment) -> int:
    if deployment.deleted_at is not None or deployment.idle_stopped_at is not None:
        return 0
    if deployment.failure_reason:
        return 0
    return min(deployment.max_replicas, max(deployment.min_replicas, deployment.desired_replicas))


def _replica_place(deployment: DedicatedDeployment, now: datetime) -> Deployment:
    """A replica and its order, in the caller's transaction. InsufficientFunds (402)
    and the order book's refusals of the shape come back as they are."""
    public_id = new_public_id("dep")
    # The order first, so the replica is written once with it: both are in this
    # transaction, and the matching round that may lease it runs after the commit.
    order = market.order_place(
        organization=deployment.organization,
        spec=market.OrderSpec(
            gpus_per_node=deployment.gpu_count,
            gpu_models=[deployment.gpu_model],
            limit_price_per_gpu_hour_micros=deployment.limit_price_per_gpu_hour_micros,
            kind=Order.Kind.ON_DEMAND,
            time_in_force=Order.TimeInForce.STANDING,
            regions=[deployment.region] if deployment.region else [],
            duration_seconds=None,
        ),
        workload_kind=Order.Workload.RAW,
        workload_id=f"{WORKLOAD_PREFIX}{public_id}",
        now=now,
    )
    return Deployment.objects.create(
        public_id=public_id,
        organization_id=deployment.organization_id,
        # Unique among live deployments (one per model): the replica's own name.
        model=f"{deployment.public_id}/{public_id}",
        base_model=deployment.base_model,
        adapter_path=deployment.adapter_path,
        idle_timeout_seconds=deployment.idle_timeout_seconds,
        last_request_at=now,
        dedicated=deployment,
        order_ref=str(order.pk),
    )


def _stop_order(replica: Deployment) -> tuple[int, int]:
    """Which replicas end first when there are too many: not ready before ready,
    the newest first."""
    return (0 if replica.status != Deployment.Status.READY else 1, -replica.pk)


def dedicated_reconcile(
    *,
    deployment: DedicatedDeployment,
    now: datetime | None = None,
    strict: bool = True,
    held: bool = False,
) -> int:
    """Place or end replicas until the deployment has the number it wants; returns
    how many changed. One transaction, the deployment's row locked. ``strict``: an
    order the book refuses (credit, constraints) raises (an API call's answer);
    otherwise the refusal fails the deployment with its reason (a background pass).
    ``held``: the caller's transaction already holds the row's lock (or made the row)
    and ``deployment`` is that row as it now stands, so it is not read again."""
    now = now or timezone.now()
    changed = 0
    # Held: part of the caller's transaction, whose failure is the caller's to roll
    # back (no savepoint of its own).
    with transaction.atomic(savepoint=not held):
        locked = (
            deployment
            if held
            else DedicatedDeployment.objects.select_for_update(of=("self",))
            .select_related("organization")
            .get(pk=deployment.pk)
        )
        live = replicas_live(locked)
        wanted = replicas_wanted(locked)
        for replica in sorted(live, key=_stop_order)[: max(0, len(live) - wanted)]:
            reason = "its endpoint deployment was deleted" if locked.deleted_at else "scaled down"
            if locked.idle_stopped_at is not None and not locked.deleted_at:
                reason = "inactive timeout"
            if deployment_stop(deployment=replica, reason=reason, now=now):
                changed += 1
        placed = len(live) - changed
        for _ in range(max(0, wanted - len(live))):
            if strict:
                _replica_place(locked, now)
            else:
                try:
                    with transaction.atomic():
                        _replica_place(locked, now)
                except (InsufficientFunds, ApplicationError) as error:
                    if placed >= locked.min_replicas:
                        _scaling_refused(locked, f"replica {placed + 1} of {wanted}", error)
                    else:
                        locked.failure_reason = f"a replica could not be ordered: {error}"[:300]
                        locked.save(update_fields=["failure_reason"])
                    break
            placed += 1
            changed += 1
        if placed >= wanted and locked.scaling_error:
            locked.scaling_error = ""
            locked.save(update_fields=["scaling_error"])
    return changed


def _scaling_refused(deployment: DedicatedDeployment, what: str, error: object) -> None:
    """The autoscaler's replica above min_replicas was refused: said on the deployment
    (its status shows it); it keeps the replicas it has and the next pass retries."""
    message = f"scaling up: {what} could not be ordered: {error}"[:300]
    if deployment.scaling_error != message:
        deployment.scaling_error = message
        deployment.save(update_fields=["scaling_error"])


def _replica_ready(replica: Deployment) -> bool:
    """Whether the replica serves: ready, or its node just reported the engine loaded
    (then it is marked ready here)."""
    if replica.status == Deployment.Status.READY:
        return True
    if replica.status == Deployment.Status.STARTING and replica.lease_ref:
        serving = external.serving_state(deployment_id=replica.public_id)
        if serving is not None and serving.serving:
            deployment_start(deployment=replica)
            return True
    return False


def dedicated_tick(*, now: datetime | None = None) -> int:
    """One pass over the live dedicated deployments: replicas whose engine loaded are
    marked ready; a replica whose order left the book unfilled stops and fails its
    deployment (one above min_replicas only says so); one idle past its inactive
    timeout stops its replicas; the autoscaled ones sample their in-flight requests
    (one read of the store for all); then each is reconciled. Returns how many
    replicas changed."""
    now = now or timezone.now()
    changed = 0
    deployments = list(DedicatedDeployment.objects.filter(deleted_at__isnull=True).order_by("pk"))
    try:
        loads = inflight_counts(dedicated_ids=[d.pk for d in deployments if autoscaled(d)])
    except Exception:
        # The load's store unreachable (Redis down): no deployment scales this pass,
        # each keeps its count; the rest of the pass (readiness, idle stops) goes on.
        logger.exception("the in-flight counts could not be read; not autoscaling this pass")
        loads = {}
    for deployment in deployments:
        live = replicas_live(deployment)
        for replica in live:
            if _replica_ready(replica):
                continue
            if not replica.lease_ref and not order_live(replica.order_ref):
                deployment_stop(deployment=replica, reason="its order left the book unfilled")
                unfilled = (
                    f"no {deployment.gpu_count}x {deployment.gpu_model} GPUs were leased in time"
                )
                if len(live) > deployment.min_replicas:
                    _scaling_refused(deployment, f"replica {len(live)}", unfilled)
                    live.remove(replica)
                else:
                    DedicatedDeployment.objects.filter(pk=deployment.pk).update(
                        failure_reason=f"{unfilled}; update the deployment to try again"
                    )
                changed += 1
        if deployment.idle_timeout_seconds and deployment.idle_stopped_at is None:
            last = deployment.last_request_at or deployment.updated_at
            if last + timedelta(seconds=deployment.idle_timeout_seconds) <= now:
                # Idle: no load to remember; it wakes at min_replicas.
                DedicatedDeployment.objects.filter(
                    pk=deployment.pk, idle_stopped_at__isnull=True
                ).update(
                    idle_stopped_at=now,
                    desired_replicas=deployment.min_replicas,
                    recommendations=[],
                )
        deployment.refresh_from_db()
        if deployment.pk in loads:
            autoscale(deployment=deployment, load=loads[deployment.pk], now=now)
        changed += dedicated_reconcile(deployment=deployment, now=now, strict=False)
    return changed


def replica_acquire(*, served: ServedModel) -> Deployment:
    """A ready replica for a request naming a dedicated endpoint (or one of its
    deployments): chosen at random in proportion to its deployment's weight. While
    replicas are starting it waits for one, up to INFERENCE_START_TIMEOUT_SECONDS,
    polling the rows (no transaction held); then a 503 with ``Retry-After``. A request
    to a deployment stopped for being idle wakes it (the next pass places its
    replicas) and is told to come back."""
    targets = served.dedicated or ()
    if not targets:
        raise _unavailable(
            served.name,
            f"{served.name} routes to no deployment: add one and give it a weight in the "
            "endpoint's traffic_split",
        )
    weights = {deployment.pk: weight for deployment, weight in targets}
    deadline = time.monotonic() + float(settings.INFERENCE_START_TIMEOUT_SECONDS)
    pause = 0.05
    while True:
        replicas = list(
            Deployment.objects.filter(dedicated_id__in=list(weights))
            .exclude(status=Deployment.Status.STOPPED)
            .order_by("pk")
        )
        ready = [r for r in replicas if _replica_ready(r)]
        while ready:
            chosen = random.choices(
                ready, weights=[weights.get(r.dedicated_id or 0, 0.0) for r in ready]
            )[0]
            serving = external.serving_state(deployment_id=chosen.public_id)
            if serving is not None and serving.live:
                Deployment.objects.filter(pk=chosen.pk).update(last_request_at=timezone.now())
                chosen.status = Deployment.Status.READY
                return chosen
            # Its node stopped serving: the replica ends, the next pass replaces it.
            deployment_stop(deployment=chosen, reason="its node stopped serving")
            ready.remove(chosen)
        woken = DedicatedDeployment.objects.filter(
            pk__in=list(weights), idle_stopped_at__isnull=False, deleted_at__isnull=True
        ).update(idle_stopped_at=None, last_request_at=timezone.now())
        # Scaled to zero (minReplicas 0) with room to grow: the request is load; one
        # replica now, held through the down window as any recommendation is.
        at = timezone.now()
        woken += DedicatedDeployment.objects.filter(
            pk__in=list(weights),
            desired_replicas=0,
            max_replicas__gt=0,
            idle_stopped_at__isnull=True,
            deleted_at__isnull=True,
            failure_reason="",
        ).update(desired_replicas=1, recommendations=history_write([(at, 1)]), last_request_at=at)
        if woken:
            raise _unavailable(
                served.name,
                f"{served.name} was stopped (inactive, or scaled to zero) and is starting "
                "again; retry in "
                f"{RETRY_AFTER_SECONDS} seconds",
            )
        remaining = deadline - time.monotonic()
        if not replicas or remaining <= 0:
            raise _unavailable(
                served.name,
                f"{served.name} has no ready replica"
                + (
                    f" yet (starting); retry in {RETRY_AFTER_SECONDS} seconds"
                    if replicas
                    else ": its deployments are stopped (maxReplicas 0) or failed"
                ),
            )
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.5)


def _unavailable(name: str, message: str) -> ApplicationError:
    return ModelUnavailable(
        message,
        details={"param": "model", "model": name, "retry_after_seconds": RETRY_AFTER_SECONDS},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
