"""Writes of inference: the model a request names, its deployment's life on the
market, and the requests themselves with their usage.

Slow work (loading a model) never runs inside a database transaction: the row says
what is intended first, the slow step runs, and the outcome is recorded in a short
transaction of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import ApplicationError
from core.models import Organization
from core.ports import EmbeddingResult, GenerationChunk, GenerationRequest, UsageRecord
from marketplace.workloads import events as ev
from marketplace.workloads import ports as external
from marketplace.workloads.errors import GenerationFailed, invalid, not_found
from marketplace.workloads.models import Deployment, FineTuneJob, new_public_id
from marketplace.workloads.services import (
    append_event,
    gpus_for,
    lease_end,
    order_cancel,
    order_live,
    order_place_managed,
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
        raise not_found("model", name, param="model")
    final = (
        job.checkpoints.filter(is_final=True).first() or job.checkpoints.order_by("-step").first()
    )
    return ServedModel(
        name, job.model, organization, final.adapter_path if final else "", job.finished_at
    )


# A deployment's life. The first request for a cold model creates it (``starting``)
# and, in the same transaction, places its marketplace order: managed work, open-ended
# and on demand (``_order_place_managed``). Matching leases GPUs; the workloads
# follower records the lease on the deployment (LeaseStarted); a serving process then
# loads the engine and marks it ``ready`` (``deployment_start``). Requests reuse it
# until no request came for its idle timeout (``deployments_stop_idle``, run by each
# pass of the matching loop) or its lease ends under it; then it is ``stopped``, its
# lease ended and settled, and the next request starts a new one.

# A 503 model_unavailable asks the client to come back after this many seconds; the
# deployment's order keeps waiting in the book meanwhile.
RETRY_AFTER_SECONDS = 10

# Engines this process holds, by deployment id. The runtime's engine registry is per
# process, so each serving process loads a deployment's engine once, for the first
# request it serves, and unloads it when it finds the deployment stopped. A load runs
# on one loader thread (the runtime loads one at a time too); concurrent requests
# share its future, and each waits for it only until its own deadline, so a slow
# load (large weights) is a 503 with Retry-After in time, never a held connection:
# the load carries on and a later request finds the engine.
_engines: set[str] = set()
_engines_load_lock = threading.Lock()
_engine_loads: dict[str, Future[None]] = {}
_engine_loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-load")


def _engine_ensure(deployment: Deployment, *, deadline: float | None = None) -> None:
    """Load the deployment's engine in this process unless it holds it already, and
    wait for the load until ``deadline`` (``time.monotonic()``; None: as long as it
    takes). Outside any transaction."""
    deployment_id = deployment.public_id
    if deployment_id in _engines:
        return
    with _engines_load_lock:
        if deployment_id in _engines:
            return
        future = _engine_loads.get(deployment_id)
        if future is None:
            future = _engine_loader.submit(
                external.engine_load,
                deployment_id=deployment_id,
                base_model=deployment.base_model,
                adapter_path=deployment.adapter_path or None,
            )
            _engine_loads[deployment_id] = future
    wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    try:
        future.result(timeout=wait)
    except FutureTimeout:
        raise _unavailable(
            deployment,
            f"{deployment.model} is loading on its deployment {deployment_id}; "
            f"retry in {RETRY_AFTER_SECONDS} seconds",
        ) from None
    except Exception as exc:
        # The weights would not load (missing, corrupt, out of memory): the caller
        # gets a 503 that says so; the next request tries the load again.
        with _engines_load_lock:
            if _engine_loads.get(deployment_id) is future:
                del _engine_loads[deployment_id]
        logger.exception("engine load failed", extra={"deployment": deployment_id})
        raise _unavailable(
            deployment,
            f"{deployment.model} could not be loaded on its deployment "
            f"{deployment_id} ({type(exc).__name__}: {str(exc)[:200]}); "
            f"retry in {RETRY_AFTER_SECONDS} seconds",
        ) from exc
    with _engines_load_lock:
        _engines.add(deployment_id)
        if _engine_loads.get(deployment_id) is future:
            del _engine_loads[deployment_id]


def _engine_drop(deployment_id: str) -> None:
    with _engines_load_lock:
        _engine_loads.pop(deployment_id, None)
    _engines.discard(deployment_id)
    try:
        external.engine_unload(deployment_id=deployment_id)
    except Exception:  # the engine may be gone with its process already
        logger.warning("engine unload failed", exc_info=True, extra={"deployment": deployment_id})


def _engines_reap() -> None:
    """Unload this process's engines of deployments stopped elsewhere (by the matching
    loop's idle check, or by the follower when their lease ended)."""
    if not _engines:
        return
    held = frozenset(_engines)  # one step under the GIL: safe while others add
    stopped = Deployment.objects.filter(
        public_id__in=sorted(held), status=Deployment.Status.STOPPED
    ).values_list("public_id", flat=True)
    for deployment_id in stopped:
        _engine_drop(deployment_id)


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


def _deployment_live(*, organization: Organization, served: ServedModel) -> Deployment:
    """The live deployment of ``served``, counted as asked for now; or a new one,
    created with its order in one transaction. Concurrent first requests meet on the
    unique live-deployment constraint: the losers' inserts (and so their orders) roll
    back, and they share the winner's. A starting deployment whose order left the book
    unfilled (expired, cancelled) is stopped and replaced."""
    now = timezone.now()
    deployment = Deployment.objects.filter(model=served.name).exclude(status="stopped").first()
    if deployment is not None and deployment.status == Deployment.Status.STARTING:
        if not deployment.lease_ref and not order_live(deployment.order_ref):
            deployment_stop(deployment=deployment, reason="its order left the book unfilled")
            return _deployment_live(organization=organization, served=served)
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
            )
            deployment.save(update_fields=["order_ref"])
    except IntegrityError:
        # Another request created it first (and placed its order).
        if not Deployment.objects.filter(model=served.name).exclude(status="stopped").exists():
            raise
        return _deployment_live(organization=organization, served=served)
    return deployment


def deployment_acquire(*, organization: Organization, served: ServedModel) -> Deployment:
    """The ready deployment of ``served``, its engine loaded in this process. For a
    cold model the request starts one (a deployment and its order) and waits for the
    lease and the engine, up to ``INFERENCE_START_TIMEOUT_SECONDS``, polling the row:
    no transaction is held while it waits, so the follower's and the matcher's commits
    are seen. No GPUs in time: a 503 ``model_unavailable`` with ``Retry-After``; the
    order stays in the book, and a later request finds the deployment it started."""
    timeout = float(settings.INFERENCE_START_TIMEOUT_SECONDS)
    deadline = time.monotonic() + timeout
    pause = 0.05
    _engines_reap()
    deployment = _deployment_live(organization=organization, served=served)
    while True:
        if deployment.status == Deployment.Status.READY:
            # In use from now: an idle stop that looked before cannot claim it.
            in_use = Deployment.objects.filter(
                pk=deployment.pk, status=Deployment.Status.READY
            ).update(last_request_at=timezone.now())
            if in_use:
                _engine_ensure(deployment, deadline=deadline)
                return deployment
        elif deployment.status == Deployment.Status.STOPPED:
            # Its lease ended before it served (preempted, node failed): start another.
            if time.monotonic() >= deadline:
                raise _model_unavailable(deployment, timeout)
            deployment = _deployment_live(organization=organization, served=served)
            continue
        elif deployment.lease_ref:
            deployment_start(deployment=deployment, deadline=deadline)
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


def deployment_start(*, deployment: Deployment, deadline: float | None = None) -> bool:
    """The deployment has its lease: load the engine and mark it ready. Returns
    whether this call marked it.

    Where the engine loads: in the serving process, by the request that finds the
    lease recorded (the one that started the deployment, waiting for it, or any later
    one). The engine registry is per process: a process generates only with an engine
    it holds, so neither the follower that records the lease nor a worker could load
    it for the web process. The load waits for the lease, so no engine runs on GPUs
    nobody leased; it runs outside any transaction, and concurrent requests in one
    process share one load (``_engine_ensure``), each waiting until its ``deadline``.
    Another serving process loads its own engine on the first request it serves for
    the deployment."""
    _engine_ensure(deployment, deadline=deadline)
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
    if not updated:
        live = Deployment.objects.filter(pk=deployment.pk).exclude(status=Deployment.Status.STOPPED)
        if not live.exists():
            _engine_drop(deployment.public_id)  # it stopped while the engine loaded
    return bool(updated)


@dataclass
class Completion:
    """A finished or streaming completion's text and exact usage."""

    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


def inference_stream(
    *, organization: Organization, served: ServedModel, request: GenerationRequest, request_id: str
) -> Iterator[GenerationChunk]:
    """Chunks from the model's deployment; usage is recorded when the last chunk is
    produced (server-side counts, streamed or not) — and, when the client goes away
    mid-stream, for the tokens generated until then. The deployment is acquired
    before this returns, so a model that cannot start answers 503 before a stream's
    200 goes out."""
    deployment = deployment_acquire(organization=organization, served=served)
    return _generation(
        organization=organization, deployment=deployment, request=request, request_id=request_id
    )


def _generation(
    *,
    organization: Organization,
    deployment: Deployment,
    request: GenerationRequest,
    request_id: str,
) -> Iterator[GenerationChunk]:
    prompt_tokens = completion_tokens = 0
    finished = False
    try:
        for chunk in external.engine_generate(deployment_id=deployment.public_id, request=request):
            if chunk.prompt_tokens is not None:
                prompt_tokens = chunk.prompt_tokens
            if chunk.completion_tokens is not None:
                completion_tokens = chunk.completion_tokens
            if chunk.finish_reason is not None:
                finished = True
            yield chunk
    except ApplicationError:
        raise  # the request's own fault (a 400 naming the field), or a known state
    except Exception as exc:
        # The engine failed this request alone (its neighbours in the batch carry
        # on): a 500 for this one, in the API's shape, with the engine's log behind it.
        logger.exception("generation failed", extra={"request_id": request_id})
        raise GenerationFailed(
            f"generating {request_id} failed on {deployment.public_id}; retry the request",
            details={"request_id": request_id},
        ) from exc
    finally:
        inference_usage_record(
            organization=organization,
            deployment=deployment,
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            complete=finished,
        )


def embeddings_create(
    *, organization: Organization, served: ServedModel, texts: list[str], request_id: str
) -> EmbeddingResult:
    """Embed ``texts`` with the model's deployment (acquired as a completion's is,
    so a cold model answers 503 in time) and meter the tokens read as the
    deployment's ``tokens.prompt``, exactly as a completion's prompt."""
    deployment = deployment_acquire(organization=organization, served=served)
    try:
        result = external.engine_embed(deployment_id=deployment.public_id, texts=texts)
    except ApplicationError:
        raise
    except Exception as exc:
        logger.exception("embedding failed", extra={"request_id": request_id})
        raise GenerationFailed(
            f"embedding {request_id} failed on {deployment.public_id}; retry the request",
            details={"request_id": request_id},
        ) from exc
    inference_usage_record(
        organization=organization,
        deployment=deployment,
        request_id=request_id,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=0,
        complete=True,
    )
    return result


def inference_usage_record(
    *,
    organization: Organization,
    deployment: Deployment,
    request_id: str,
    prompt_tokens: int,
    completion_tokens: int,
    complete: bool,
) -> None:
    """Meter the request's exact token counts (the engine's, from its last chunk;
    for a stream the client left, the tokens generated until then) and count it on
    its deployment. The usage ids are the request's, so a retry of the recording is
    not billed twice."""
    now = timezone.now()
    # Priced by the base model's tier: a fine-tuned model serves at its base's rate.
    dimensions: dict[str, str | int] = {"model": deployment.base_model}
    records = [
        UsageRecord(
            id=f"{request_id}:{kind}",
            source="api/inference",
            type=f"tokens.{kind}",
            organization_id=organization.pk,
            subject_kind="deployment",
            subject_id=deployment.public_id,
            time=now,
            quantity=quantity,
            dimensions=dimensions,
        )
        for kind, quantity in (("prompt", prompt_tokens), ("completion", completion_tokens))
        if quantity > 0
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
    for deployment in Deployment.objects.exclude(status=Deployment.Status.STOPPED).order_by("pk"):
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
    ``now``; an order still in the book is cancelled; the engine is unloaded in this
    process once that commits (other serving processes unload theirs at their next
    request). With ``idle_since`` it is claimed only if no request came since it was
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
            lease_end(stopped.lease_ref, why, now=now)
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
        transaction.on_commit(lambda: _engine_drop(stopped.public_id))
    return True


def deployment_lease_started(*, deployment_id: str, lease_ref: str, order_ref: str) -> bool:
    """The deployment's order got its lease (the follower, on LeaseStarted): record
    it; the waiting request, or the next one, loads the engine. A lease that serves no
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
    return True


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
