"""Writes of inference: the model a request names, its deployment's life on the
market, and the requests themselves with their usage.

Slow work (loading a model) never runs inside a database transaction: the row says
what is intended first, the slow step runs, and the outcome is recorded in a short
transaction of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import ApplicationError
from core.models import Organization
from core.ports import UsageRecord
from marketplace.workloads import events as ev
from marketplace.workloads import ports as external
from marketplace.workloads.endpoint_names import dedicated_route
from marketplace.workloads.errors import invalid, not_found
from marketplace.workloads.managed import (
    append_event,
    gpus_for,
    lease_end,
    order_cancel,
    order_live,
    order_place_managed,
)
from marketplace.workloads.models import (
    DedicatedDeployment,
    Deployment,
    FineTuneJob,
    new_public_id,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model a request may name: a base model, or the caller's fine-tuned one."""

    name: str
    base_model: str
    organization: Organization | None
    adapter_path: str
    created_at: datetime | None
    # A dedicated endpoint's name (or one of its deployments'): the deployments it
    # routes to, with their weights (marketplace/workloads/dedicated.py acquires a
    # replica); None for a base or fine-tuned model served per token.
    dedicated: tuple[tuple[DedicatedDeployment, float], ...] | None = None


def model_resolve(*, organization: Organization, name: str) -> ServedModel:
    """The model ``name`` as ``organization`` may use it. Another organization's
    fine-tuned model is not found, exactly like one that does not exist."""
    if not name:
        raise invalid("model is required", param="model", code="missing_model")
    card = external.base_model(name)
    if card is not None:
        return ServedModel(card.name, card.name, None, "", None)
    job = FineTuneJob.objects.filter(
        organization=organization, fine_tuned_model=name, status=FineTuneJob.Status.SUCCEEDED
    ).first()
    if job is None:
        route = dedicated_route(organization=organization, name=name)
        if route is None:
            raise not_found("model", name, param="model")
        targets, _ = route
        base = targets[0][0].base_model if targets else ""
        return ServedModel(name, base, organization, "", None, dedicated=tuple(targets))
    final = (
        job.checkpoints.filter(is_final=True).first() or job.checkpoints.order_by("-step").first()
    )
    return ServedModel(
        name, job.model, organization, final.adapter_path if final else "", job.finished_at
    )


# A deployment's life. The first request for a cold model creates it (``starting``)
# and, in the same transaction, places its marketplace order: managed work, open-ended
# and on demand (``order_place_managed``). Matching leases GPUs; the workloads
# follower records the lease on the deployment (LeaseStarted) and, in the same
# transaction, queues its engine for the leased node (an assignment of kind
# ``serve``). The node's agent claims it, starts the engine on the leased GPUs and
# reports it started once the engine has loaded; the next request to look then marks
# the deployment ``ready`` (``deployment_start``). Requests reach the engine through
# the relay (marketplace/workloads/gateway.py) until no request came for its idle
# timeout (``deployments_stop_idle``, run by each pass of the matching loop), its
# lease ends under it, or its node stops serving (lost, or the engine failed); then
# it is ``stopped``, its lease ended and settled (which stops the engine on the
# node), and the next request starts a new one.

# A 503 model_unavailable asks the client to come back after this many seconds; the
# deployment's order keeps waiting in the book meanwhile.
RETRY_AFTER_SECONDS = 10
# Requests in one serve process's batches at most (runtime/inference.py).
MAX_BATCH = 16


def _order_organization(*, organization: Organization, served: ServedModel) -> Organization:
    """Whose name a deployment's order is in. A fine-tuned model's deployment is its
    owner's; a base model's is shared by every buyer, so it is the operator's when the
    operator buys, else that of the organization whose request started it. Either way
    nothing is billed to it for the lease: managed work is paid per token."""
    if served.organization is not None:
        return served.organization
    operator = Organization.objects.filter(
        is_operator=True, kind__in=[Organization.Kind.BUYER, Organization.Kind.BOTH]
    ).first()
    return operator or organization


def deployment_live(
    *,
    organization: Organization,
    served: ServedModel,
    capacity: str = Deployment.Capacity.ON_DEMAND,
) -> Deployment:
    """The live deployment of ``served`` on ``capacity`` (on demand for online
    requests, interruptible for batches), counted as asked for now; or a new one,
    created with its order in one transaction. Concurrent first requests meet on the
    unique live-deployment constraint: the losers' inserts (and so their orders) roll
    back, and they share the winner's. A starting deployment whose order left the book
    unfilled (expired, cancelled) is stopped and replaced."""
    now = timezone.now()
    live = Deployment.objects.filter(model=served.name, capacity=capacity)
    deployment = live.exclude(status="stopped").first()
    if deployment is not None and deployment.status == Deployment.Status.STARTING:
        if not deployment.lease_ref and not order_live(deployment.order_ref):
            deployment_stop(deployment=deployment, reason="its order left the book unfilled")
            return deployment_live(organization=organization, served=served, capacity=capacity)
        # Asked for: its idle time starts again (the claim in deployment_stop sees it).
        Deployment.objects.filter(pk=deployment.pk, status=Deployment.Status.STARTING).update(
            last_request_at=now
        )
    if deployment is not None:
        return deployment
    public_id = new_public_id("dep")
    card = external.base_model(served.base_model)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                public_id=public_id,
                organization=served.organization,
                model=served.name,
                capacity=capacity,
                base_model=served.base_model,
                adapter_path=served.adapter_path,
                idle_timeout_seconds=settings.INFERENCE_IDLE_SECONDS,
                last_request_at=now,
            )
            deployment.order_ref = order_place_managed(
                organization=_order_organization(organization=organization, served=served),
                model=served.base_model,
                work="serve",
                gpus=gpus_for(card, "serve") if card else 1,
                workload_kind="inference",
                workload_id=public_id,
                interruptible=capacity == Deployment.Capacity.INTERRUPTIBLE,
            )
            deployment.save(update_fields=["order_ref"])
    except IntegrityError:
        # Another request created it first (and placed its order).
        if not live.exclude(status="stopped").exists():
            raise
        return deployment_live(organization=organization, served=served, capacity=capacity)
    return deployment


def deployment_acquire(*, organization: Organization, served: ServedModel) -> Deployment:
    """The ready deployment of ``served``: its engine running on its leased node. For
    a cold model the request starts one (a deployment and its order) and waits for
    the lease and the node's engine, up to ``INFERENCE_START_TIMEOUT_SECONDS``,
    polling the rows: no transaction is held while it waits, so the follower's, the
    matcher's and the node's commits are seen. No GPUs in time, or an engine still
    loading: a 503 ``model_unavailable`` with ``Retry-After``; the order stays in the
    book (the engine keeps loading), and a later request finds the deployment it
    started. A deployment whose node stopped serving is stopped and started anew."""
    timeout = float(settings.INFERENCE_START_TIMEOUT_SECONDS)
    deadline = time.monotonic() + timeout
    pause = 0.05
    deployment = deployment_live(organization=organization, served=served)
    while True:
        if deployment.status == Deployment.Status.READY:
            serving = external.serving_state(deployment_id=deployment.public_id)
            if serving is None or not serving.live:
                reason = serving.failure_reason if serving is not None else "no engine"
                deployment_stop(
                    deployment=deployment, reason=f"its node stopped serving ({reason})"[:200]
                )
                deployment.refresh_from_db()
                continue  # stopped: the branch below starts another in time
            # In use from now: an idle stop that looked before cannot claim it.
            in_use = Deployment.objects.filter(
                pk=deployment.pk, status=Deployment.Status.READY
            ).update(last_request_at=timezone.now())
            if in_use:
                return deployment
        elif deployment.status == Deployment.Status.STOPPED:
            # Its lease ended before it served (preempted, node failed): start another.
            if time.monotonic() >= deadline:
                raise _model_unavailable(deployment, timeout)
            deployment = deployment_live(organization=organization, served=served)
            continue
        elif deployment.lease_ref:
            serving = external.serving_state(deployment_id=deployment.public_id)
            if serving is not None and serving.serving:
                deployment_start(deployment=deployment)
            elif serving is not None and not serving.live:
                # The node could not start the engine (weights missing, out of
                # memory): a 503 that says so, and the engine is queued again on the
                # same lease, so the next request finds it loading (or loaded). A
                # node lost meanwhile fails its lease, which stops the deployment.
                external.serving_assign(
                    lease_id=int(deployment.lease_ref),
                    deployment_id=deployment.public_id,
                    spec=serve_spec(deployment),
                )
                raise _unavailable(
                    deployment,
                    f"{deployment.model} could not be loaded on its deployment "
                    f"{deployment.public_id} ({serving.failure_reason[:200]}); "
                    f"retry in {RETRY_AFTER_SECONDS} seconds",
                )
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _unavailable(
                        deployment,
                        f"{deployment.model} is loading on its deployment "
                        f"{deployment.public_id}; retry in {RETRY_AFTER_SECONDS} seconds",
                    )
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.5)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _model_unavailable(deployment, timeout)
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)
        deployment.refresh_from_db()


def _model_unavailable(deployment: Deployment, waited: float) -> ApplicationError:
    return _unavailable(
        deployment,
        f"{deployment.model} is not running, and no GPUs were found on the market to start "
        f"it within {waited:g} seconds; its deployment {deployment.public_id} keeps waiting "
        f"for GPUs: retry in {RETRY_AFTER_SECONDS} seconds",
    )


def _unavailable(deployment: Deployment, message: str) -> ApplicationError:
    """A 503 model_unavailable for ``deployment``, asking the client to come back after
    RETRY_AFTER_SECONDS."""
    return ModelUnavailable(
        message,
        details={
            "param": "model",
            "deployment_id": deployment.public_id,
            "retry_after_seconds": RETRY_AFTER_SECONDS,
        },
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def deployment_start(*, deployment: Deployment) -> bool:
    """The deployment's engine is running on its leased node (its serve assignment
    runs: the node reported the engine loaded): mark it ready. Returns whether this
    call marked it."""
    with transaction.atomic():
        updated = (
            Deployment.objects.filter(
                pk=deployment.pk, status=Deployment.Status.STARTING, lease_ref=deployment.lease_ref
            )
            .exclude(lease_ref="")
            .update(status=Deployment.Status.READY, ready_at=timezone.now())
        )
        if updated:
            append_event(
                ev.deployment_stream_id(deployment.public_id),
                ev.DEPLOYMENT_STREAM,
                ev.DeploymentStarted(
                    deployment_id=deployment.public_id,
                    model=deployment.model,
                    organization_id=deployment.organization_id,
                ),
                deployment.organization_id,
            )
    return bool(updated)


def inference_usage_record(
    *,
    organization: Organization,
    deployment: Deployment,
    request_id: str,
    prompt_tokens: int,
    completion_tokens: int,
    complete: bool,
    service_tier: str = "",
) -> None:
    """Meter the request's exact token counts (the engine's, from its last chunk;
    for a stream the client left, the tokens generated until then) and count it on
    its deployment. The usage ids are the request's, so a retry of the recording is
    not billed twice. ``service_tier`` ``batch``: a batch's request, rated at the
    price book's batch discount."""
    now = timezone.now()
    # Priced by the base model's tier: a fine-tuned model serves at its base's rate.
    dimensions: dict[str, str | int] = {"model": deployment.base_model}
    # A dedicated replica's lease is its bill (per minute): its tokens are counted on
    # the deployment, never metered for a per-token charge as well.
    metered = deployment.dedicated_id is None
    if service_tier:
        dimensions["service_tier"] = service_tier
    records = [
        UsageRecord(
            id=f"{request_id}:{kind}",
            source="api/batch" if service_tier else "api/inference",
            type=f"tokens.{kind}",
            organization_id=organization.pk,
            subject_kind="deployment",
            subject_id=deployment.public_id,
            time=now,
            quantity=quantity,
            dimensions=dimensions,
        )
        for kind, quantity in (("prompt", prompt_tokens), ("completion", completion_tokens))
        if quantity > 0 and metered
    ]
    if records:
        statuses = external.usage_record(records)
        for record, status in zip(records, statuses, strict=True):
            if status.startswith("rejected"):
                logger.error("inference usage %s was refused: %s", record.id, status)
    Deployment.objects.filter(pk=deployment.pk).update(
        requests_served=F("requests_served") + 1,
        prompt_tokens=F("prompt_tokens") + prompt_tokens,
        completion_tokens=F("completion_tokens") + completion_tokens,
        last_request_at=now,
    )
    if deployment.dedicated_id is not None:
        DedicatedDeployment.objects.filter(pk=deployment.dedicated_id).update(last_request_at=now)
    if not complete:
        logger.info(
            "inference request ended before its last chunk",
            extra={"request_id": request_id, "deployment": deployment.public_id},
        )


def deployments_stop_idle(*, now: datetime | None = None) -> int:
    """Stop deployments, starting or ready, that no request asked for during their
    idle timeout; return how many. Each pass of the matching loop runs it (the live
    deployments are at most one per model, found through their partial index)."""
    now = now or timezone.now()
    stopped = 0
    # A dedicated deployment's replicas stop by its own inactive timeout (dedicated.py).
    live = Deployment.objects.exclude(status=Deployment.Status.STOPPED).filter(dedicated=None)
    for deployment in live.order_by("pk"):
        last = deployment.last_request_at or deployment.ready_at or deployment.created_at
        if last + timedelta(seconds=deployment.idle_timeout_seconds) > now:
            continue
        if deployment_stop(deployment=deployment, reason="idle", idle_since=last, now=now):
            stopped += 1
    return stopped


def deployment_stop(
    *,
    deployment: Deployment,
    reason: str,
    idle_since: datetime | None = None,
    now: datetime | None = None,
) -> bool:
    """Stop a live deployment: its lease ends, the provider's GPU-seconds settled to
    ``now`` (and the lease's end tells its node to stop the engine); an order still in
    the book is cancelled. With ``idle_since`` it is claimed only if no request came since it was
    read (a conditional update). Returns whether this call stopped it."""
    now = now or timezone.now()
    with transaction.atomic():
        query = Deployment.objects.filter(pk=deployment.pk).exclude(
            status=Deployment.Status.STOPPED
        )
        if idle_since is not None:
            query = query.filter(last_request_at=deployment.last_request_at)
        if not query.update(status=Deployment.Status.STOPPED, stopped_at=now):
            return False
        stopped = Deployment.objects.get(pk=deployment.pk)
        why = f"inference deployment {stopped.public_id} stopped: {reason}"
        if stopped.lease_ref:
            # A dedicated replica is billed per whole minute (managed.whole_minutes_until).
            lease_end(
                stopped.lease_ref, why, now=now, whole_minutes=stopped.dedicated_id is not None
            )
        if stopped.order_ref:
            # Still in the book (or leased before the lease was recorded): cancelled,
            # so it does not lease GPUs for a deployment that is gone.
            order_cancel(stopped.order_ref, now=now)
        append_event(
            ev.deployment_stream_id(stopped.public_id),
            ev.DEPLOYMENT_STREAM,
            ev.DeploymentStopped(
                deployment_id=stopped.public_id,
                reason=reason,
                requests_served=stopped.requests_served,
            ),
            stopped.organization_id,
        )
    return True


def deployment_lease_started(*, deployment_id: str, lease_ref: str, order_ref: str) -> bool:
    """The deployment's order got its lease (the follower, on LeaseStarted): record
    it and queue its engine for the leased node (a serve assignment, in this
    transaction). A lease that serves no
    starting deployment (it stopped meanwhile, or it is not its order's) ends at once.
    Idempotent: a second delivery of the same lease changes nothing."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().filter(public_id=deployment_id).first()
        if deployment is not None and deployment.lease_ref == lease_ref:
            return False
        if (
            deployment is None
            or deployment.status != Deployment.Status.STARTING
            or deployment.lease_ref
            or deployment.order_ref != order_ref
        ):
            lease_end(lease_ref, f"inference deployment {deployment_id} is no longer starting")
            return False
        deployment.lease_ref = lease_ref
        deployment.save(update_fields=["lease_ref"])
        external.serving_assign(
            lease_id=int(lease_ref),
            deployment_id=deployment.public_id,
            spec=serve_spec(deployment),
        )
    return True


def serve_spec(deployment: Deployment) -> dict[str, str | int]:
    """What the node's engine loads: the base model and, for a fine-tuned model, the
    job whose trained adapter the node downloads (a signed URL in its claim)."""
    adapter_job = ""
    served = deployment.dedicated.model if deployment.dedicated is not None else deployment.model
    if deployment.organization_id is not None:
        job = (
            FineTuneJob.objects.filter(
                organization_id=deployment.organization_id,
                fine_tuned_model=served,
                status=FineTuneJob.Status.SUCCEEDED,
            )
            .values_list("public_id", flat=True)
            .first()
        )
        adapter_job = job or ""
    return {
        "deployment_id": deployment.public_id,
        "base_model": deployment.base_model,
        "adapter_job": adapter_job,
        "max_batch": MAX_BATCH,
    }


def deployment_lease_ended(*, lease_ref: str, reason: str) -> bool:
    """A deployment's lease ended under it (preempted, its node failed, the provider
    withdrew, the order was cancelled): the deployment is stopped, and its order
    cancelled rather than left to lease GPUs again, so the next request starts a new
    one. Leases of anything else are not found here."""
    deployment = (
        Deployment.objects.filter(lease_ref=lease_ref)
        .exclude(status=Deployment.Status.STOPPED)
        .first()
    )
    if deployment is None:
        return False
    return deployment_stop(deployment=deployment, reason=f"its lease ended ({reason})")


class ModelUnavailable(ApplicationError):
    status_code = 503
    code = "model_unavailable"
