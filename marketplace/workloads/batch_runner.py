"""The runner of a batch: its requests through its model's interruptible deployment,
the relay and the node's engine, as online requests go, a few dozen at a time.

One runner works on a batch at a time. It holds the batch with a token and a
deadline (``runner_token``, ``runner_until``: a conditional update), renewed while
it works; the dramatiq actor runs it a slice at a time and sends it on with its
token, and the sweep (``batches_tick``) starts a new one only once the deadline
passed (its process died). Within a slice:

1. The model's interruptible deployment is found or started (its order waits in
   the book for spare GPUs; the slice ends and comes back while it does).
2. Worker threads (``IN_FLIGHT``, so the engine's batches stay full while replies
   travel) each claim the next pending request with a conditional update (``SKIP
   LOCKED`` on PostgreSQL) and a claim deadline, send it through the gateway
   without streaming, and record its response with a conditional update naming
   their claim. A claim whose runner died runs again once its deadline passed.
3. The node lost (the lease preempted, the node failed): the requests in flight go
   back to pending, the slice ends, and the next one runs them on the next lease.

Billing: the gateway records each request's tokens with the request's own usage ids
(``<batch request id>:prompt`` / ``:completion``) and ``service_tier=batch``, so a
request that ran twice (its node lost after the engine read it) is billed once, at
the batch discount.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.db import is_postgres
from core.errors import ApplicationError, InvalidInput
from marketplace.workloads import gateway, inputs
from marketplace.workloads import ports as external
from marketplace.workloads.batches import ENDPOINTS, LIVE, batch_fail, batch_finalize
from marketplace.workloads.completions import (
    EMBEDDING_INPUTS_MAX,
    completion_object,
    embedding_object,
)
from marketplace.workloads.errors import GenerationFailed, openai_error_body
from marketplace.workloads.inference import (
    MAX_BATCH,
    deployment_live,
    deployment_start,
    deployment_stop,
    model_resolve,
    serve_spec,
)
from marketplace.workloads.models import Batch, BatchRequest, Deployment
from pricing.selectors import BATCH_SERVICE_TIER

logger = logging.getLogger(__name__)

RUNNER_TTL = timedelta(seconds=30)
# A claimed request is taken again after this long: longer than the gateway waits
# for a node that says nothing (gateway.STALL_SECONDS).
REQUEST_CLAIM = timedelta(seconds=gateway.STALL_SECONDS + 60)
SLICE_SECONDS = 120.0
# In flight at once: two of the engine's batches, so one fills while one runs.
IN_FLIGHT = 2 * MAX_BATCH
IN_FLIGHT_SQLITE = 4  # one writer at a time there
MAX_FAILURES = 3
WAIT_SECONDS = 1.0  # before looking again at a deployment that is starting
MONITOR_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Next:
    """Run the batch again after ``delay`` seconds with ``token`` (the runner's)."""

    delay: float
    token: str


def _claim_runner(batch: Batch, token: str, *, hold: timedelta = RUNNER_TTL) -> bool:
    now = timezone.now()
    return bool(
        Batch.objects.filter(pk=batch.pk, status__in=LIVE)
        .filter(Q(runner_token=token) | Q(runner_until__isnull=True) | Q(runner_until__lt=now))
        .update(runner_token=token, runner_until=now + hold)
    )


def _release_runner(batch: Batch, token: str) -> None:
    Batch.objects.filter(pk=batch.pk, runner_token=token).update(runner_token="", runner_until=None)


def batch_run(*, batch_id: str, token: str = "", budget: float = SLICE_SECONDS) -> Next | None:
    """One slice of the batch's runner (see the module doc). Returns when to run it
    again, or None: it is finished, or another runner holds it."""
    batch = (
        Batch.objects.select_related("organization")
        .filter(public_id=batch_id, status__in=LIVE)
        .first()
    )
    token = token or uuid.uuid4().hex
    if batch is None or not _claim_runner(batch, token):
        return None
    deadline = time.monotonic() + budget
    try:
        delay = _slice(batch, token, deadline)
    except Exception:
        _release_runner(batch, token)
        raise
    if delay is None:
        _release_runner(batch, token)
        return None
    # Held until the next slice comes, so the sweep does not start a second runner.
    _claim_runner(batch, token, hold=RUNNER_TTL + timedelta(seconds=delay))
    return Next(delay, token)


def _requests_reclaim(batch: Batch) -> int:
    """Requests whose claim ran out (their runner died) are pending again."""
    return BatchRequest.objects.filter(
        batch=batch, state=BatchRequest.State.RUNNING, claimed_until__lt=timezone.now()
    ).update(state=BatchRequest.State.PENDING, claimed_by="", claimed_until=None)


def _slice(batch: Batch, token: str, deadline: float) -> float | None:
    _requests_reclaim(batch)
    while time.monotonic() < deadline:
        batch.refresh_from_db()
        if batch.status not in LIVE or batch.runner_token != token:
            return None
        if batch_finalize(batch=batch):
            return None
        pending = BatchRequest.objects.filter(batch=batch, state=BatchRequest.State.PENDING)
        if not pending.exists():
            return WAIT_SECONDS  # only running ones left: theirs to finish, or to reclaim
        try:
            deployment = _deployment_ready(batch)
        except ApplicationError as exc:  # its model is gone (a fine-tuned model deleted)
            batch_fail(batch=batch, code=exc.code, message=exc.message)
            return None
        if deployment is None:
            return WAIT_SECONDS
        _serve(batch, deployment, token, deadline)
    return 0.0


def _deployment_ready(batch: Batch) -> Deployment | None:
    """The batch model's interruptible deployment if its engine serves; else None,
    having started it (its order placed) or moved it along, as the gateway's
    ``deployment_acquire`` does without waiting."""
    served = model_resolve(organization=batch.organization, name=batch.model)
    deployment = deployment_live(
        organization=batch.organization,
        served=served,
        capacity=Deployment.Capacity.INTERRUPTIBLE,
    )
    serving = external.serving_state(deployment_id=deployment.public_id)
    if deployment.status == Deployment.Status.READY:
        if serving is None or not serving.live:
            deployment_stop(deployment=deployment, reason="its node stopped serving")
            return None
        in_use = Deployment.objects.filter(pk=deployment.pk, status=Deployment.Status.READY).update(
            last_request_at=timezone.now()
        )
        return deployment if in_use else None
    if deployment.lease_ref and serving is not None:
        if serving.serving:
            deployment_start(deployment=deployment)
            deployment.refresh_from_db()
            return deployment if deployment.status == Deployment.Status.READY else None
        if not serving.live:  # the engine failed to load: the node tries again
            external.serving_assign(
                lease_id=int(deployment.lease_ref),
                deployment_id=deployment.public_id,
                spec=serve_spec(deployment),
            )
    return None


def _serve(batch: Batch, deployment: Deployment, token: str, deadline: float) -> None:
    """Run pending requests on ``deployment`` until none is left, the slice's time
    is up, the deployment stops or the batch is no longer this runner's."""
    stop = threading.Event()
    width = IN_FLIGHT if is_postgres() else IN_FLIGHT_SQLITE
    workers = [
        threading.Thread(
            target=_worker,
            args=(batch, deployment, token, stop),
            name=f"batch-{batch.public_id[-6:]}-{n}",
            daemon=True,
        )
        for n in range(width)
    ]
    for worker in workers:
        worker.start()
    renewed = time.monotonic()
    while any(worker.is_alive() for worker in workers):
        time.sleep(MONITOR_SECONDS)
        if time.monotonic() >= deadline:
            stop.set()
        if time.monotonic() - renewed > RUNNER_TTL.total_seconds() / 3:
            renewed = time.monotonic()
            if not _claim_runner(batch, token):
                stop.set()
        live = Deployment.objects.filter(pk=deployment.pk, status=Deployment.Status.READY)
        if not live.exists():
            stop.set()
        else:
            live.update(last_request_at=timezone.now())


def _worker(batch: Batch, deployment: Deployment, token: str, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            request = _request_claim(batch, token)
            if request is None:
                return
            try:
                _request_run(batch, deployment, request, token)
            except Exception:
                logger.exception("a batch request failed", extra={"request": request.public_id})
                _request_retry_or_fail(request, token, GenerationFailed("recording it failed"))
    finally:
        connection.close()


def _request_claim(batch: Batch, token: str) -> BatchRequest | None:
    """The next pending request, claimed for this runner (attempts counted)."""
    for _ in range(8):
        pending = BatchRequest.objects.filter(batch=batch, state=BatchRequest.State.PENDING)
        with transaction.atomic():
            if is_postgres():
                pending = pending.select_for_update(skip_locked=True)
            found = pending.order_by("line").values_list("pk", flat=True).first()
            if found is None:
                return None
            claimed = BatchRequest.objects.filter(
                pk=found, state=BatchRequest.State.PENDING
            ).update(
                state=BatchRequest.State.RUNNING,
                claimed_by=token,
                claimed_until=timezone.now() + REQUEST_CLAIM,
                attempts=F("attempts") + 1,
            )
        if claimed:
            return BatchRequest.objects.get(pk=found)
    return None


def _mine(request: BatchRequest, token: str) -> Any:
    return BatchRequest.objects.filter(
        pk=request.pk, state=BatchRequest.State.RUNNING, claimed_by=token
    )


def _request_run(batch: Batch, deployment: Deployment, request: BatchRequest, token: str) -> None:
    """Send one request, and record how it went (see the module doc)."""
    relay_id = f"{request.public_id}.{request.attempts}"
    try:
        status, body, usage = _execute(batch, deployment, request, relay_id)
    except gateway.NodeLost:
        # Preempted or lost: it runs again on the next lease, billed once all told.
        _mine(request, token).update(
            state=BatchRequest.State.PENDING, claimed_by="", claimed_until=None
        )
        return
    except Exception as exc:
        if not isinstance(exc, ApplicationError):
            logger.exception("a batch request failed", extra={"request": request.public_id})
            exc = GenerationFailed(f"generating {request.public_id} failed")
        if exc.status_code >= 500:
            _request_retry_or_fail(request, token, exc)
            return
        status, body, usage = exc.status_code, openai_error_body(exc), (0, 0)
    _request_record(request, token, status, relay_id, body, usage)


def _request_record(
    request: BatchRequest,
    token: str,
    status: int,
    relay_id: str,
    body: dict[str, Any],
    usage: tuple[int, int],
) -> None:
    response = {"status_code": status, "request_id": relay_id, "body": body}
    _mine(request, token).update(
        state=BatchRequest.State.COMPLETED if status == 200 else BatchRequest.State.FAILED,
        status_code=status,
        response=json.dumps(response, separators=(",", ":")),
        prompt_tokens=usage[0],
        completion_tokens=usage[1],
        finished_at=timezone.now(),
    )


def _request_retry_or_fail(request: BatchRequest, token: str, exc: ApplicationError) -> None:
    """A failure on our side: pending again, to run again, up to MAX_FAILURES times;
    then failed with the error its online route would have answered."""
    if request.failures + 1 < MAX_FAILURES:
        _mine(request, token).update(
            state=BatchRequest.State.PENDING,
            claimed_by="",
            claimed_until=None,
            failures=F("failures") + 1,
        )
        return
    _request_record(
        request, token, exc.status_code, request.public_id, openai_error_body(exc), (0, 0)
    )


def _execute(
    batch: Batch, deployment: Deployment, request: BatchRequest, relay_id: str
) -> tuple[int, dict[str, Any], tuple[int, int]]:
    """The request's answer, as its online route gives it: (status, body, usage).
    A body the engine refuses is that request's 400, as online."""
    body = inputs.body_object(request.body, nul_ok=True)
    kind = ENDPOINTS[batch.endpoint]
    try:
        if kind == "embedding":
            texts, encoding = inputs.embedding_request(body, max_inputs=EMBEDDING_INPUTS_MAX)
            result = gateway.embeddings_create_on(
                organization=batch.organization,
                deployment=deployment,
                texts=texts,
                request_id=relay_id,
                service_tier=BATCH_SERVICE_TIER,
                usage_id=request.public_id,
            )
            answer = embedding_object(result, encoding=encoding, model=batch.model)
            return 200, answer, (result.prompt_tokens, 0)
        generation = inputs.generation_request(body, chat=kind == "chat")
        chunks = gateway.inference_stream_on(
            organization=batch.organization,
            deployment=deployment,
            request=generation,
            request_id=relay_id,
            stream=False,
            service_tier=BATCH_SERVICE_TIER,
            usage_id=request.public_id,
        )
        answer = completion_object(
            chunks,
            request_id=f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=batch.model,
            chat=kind == "chat",
            together=False,
            generation=generation,
        )
        usage = answer["usage"]
        return 200, answer, (usage["prompt_tokens"], usage["completion_tokens"])
    except InvalidInput as exc:
        return 400, openai_error_body(exc), (0, 0)
