"""The inference gateway: a request for a deployment goes to its node through the
relay, and the node's replies come back to the client; what is billed is counted
here.

1. The deployment is acquired (marketplace/workloads/inference.py): a cold model
   answers 503 in time, before anything is queued.
2. The request goes on the deployment's queue (relay.py). The node's agent takes it
   with others (a batch), its engine checks it and answers ``accepted`` or an error:
   the error is this request's 400 (or 500), before any 200 goes out.
3. Chunks are read as the node posts them and handed to the API (SSE for a stream,
   joined otherwise). A stream may ask for its sampled tokens (Together's client
   types each chunk with one): the node's chunks then carry them (``tokens``), and
   a chunk carrying several is handed on as one chunk per token. While none comes,
   the gateway checks, about once a second, that the deployment's node still serves
   (its serve claim renewed within the TTL): a node lost mid-request is a 502
   ``node_lost`` (an error event in a stream whose 200 is out).
4. Usage is recorded once per request, from the gateway's own counts, never from a
   number the node reports: the prompt with the model's tokenizer and chat template
   (exactly what the engine reads), the completion by tokenizing the text the client
   received, plus one for the end of a completion that stopped (at most the
   request's ``max_tokens``). A request cut short — the client
   left, or the node was lost — is billed for the text received until then.
5. A request to a dedicated endpoint's replica counts as in flight from its
   submission to its end, however it ends (marketplace/workloads/inflight.py): the
   load its deployment's autoscaler samples.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

from core.errors import ApplicationError, InvalidInput
from core.models import Organization
from core.ports import EmbeddingResult, GenerationChunk, GenerationRequest, SampledToken
from marketplace.workloads import ports as external
from marketplace.workloads.dedicated import replica_acquire
from marketplace.workloads.errors import GenerationFailed
from marketplace.workloads.inference import (
    ServedModel,
    deployment_acquire,
    inference_usage_record,
)
from marketplace.workloads.inflight import request_enter, request_leave
from marketplace.workloads.models import Deployment
from marketplace.workloads.relay import relay

logger = logging.getLogger(__name__)

# How long one read of the replies waits before the node's claim is looked at.
REPLY_WAIT_SECONDS = 1.0
# A node that still renews but says nothing about a request for this long has lost
# it (its engine wedged): the request fails rather than waiting for ever.
STALL_SECONDS = 120
FINISH_REASONS = frozenset({"stop", "length"})


class NodeLost(ApplicationError):
    """The node serving the deployment stopped renewing its claim (it died, or lost
    the network) while a request waited for it: a 502 for that request."""

    status_code = 502
    code = "node_lost"


def _acquire(organization: Organization, served: ServedModel) -> Deployment:
    """The deployment that serves the request: a replica of a dedicated endpoint's
    deployment, or the model's shared deployment (started on demand)."""
    if served.dedicated is not None:
        return replica_acquire(served=served)
    return deployment_acquire(organization=organization, served=served)


def _node_check(deployment: Deployment, request_id: str) -> None:
    serving = external.serving_state(deployment_id=deployment.public_id)
    if serving is None or not serving.live:
        raise NodeLost(
            f"the node serving {deployment.model} (deployment {deployment.public_id}) "
            f"stopped answering during {request_id}; retry the request",
            details={"request_id": request_id, "deployment_id": deployment.public_id},
        )


def _replies(deployment: Deployment, request_id: str) -> Iterator[dict[str, Any]]:
    """The node's replies to the request, in order, for as long as its node serves and
    says something at least every STALL_SECONDS."""
    queues = relay()
    last = time.monotonic()
    while True:
        found = queues.replies(
            deployment_id=deployment.public_id, request_id=request_id, wait=REPLY_WAIT_SECONDS
        )
        if found:
            last = time.monotonic()
            yield from found
            continue
        _node_check(deployment, request_id)
        if time.monotonic() - last > STALL_SECONDS:
            logger.error(
                "the node went quiet on a request",
                extra={"request_id": request_id, "deployment": deployment.public_id},
            )
            raise GenerationFailed(
                f"{request_id} got no answer from {deployment.public_id} for "
                f"{STALL_SECONDS} seconds; retry the request",
                details={"request_id": request_id},
            )


def _reply_error(reply: dict[str, Any], deployment: Deployment, request_id: str) -> Exception:
    """The engine's verdict on the request as our error: a 400 naming the field it
    gave, else a 500 for this request alone."""
    error = reply.get("error")
    if isinstance(error, dict) and error.get("status") == 400:
        field = str(error.get("field") or "")
        return InvalidInput(
            str(error.get("message") or "the request was refused")[:2000],
            details={"field": field} if field else {},
        )
    logger.error(
        "the node failed a request",
        extra={"request_id": request_id, "deployment": deployment.public_id, "reply": reply},
    )
    return GenerationFailed(
        f"generating {request_id} failed on {deployment.public_id}; retry the request",
        details={"request_id": request_id},
    )


def _protocol_error(deployment: Deployment, request_id: str, what: str) -> GenerationFailed:
    logger.error(
        "the node sent an unreadable reply: %s",
        what,
        extra={"request_id": request_id, "deployment": deployment.public_id},
    )
    return GenerationFailed(
        f"generating {request_id} failed on {deployment.public_id}; retry the request",
        details={"request_id": request_id},
    )


def inference_stream(
    *,
    organization: Organization,
    served: ServedModel,
    request: GenerationRequest,
    request_id: str,
    stream: bool = True,
    tokens: bool = False,
) -> Iterator[GenerationChunk]:
    """Chunks of the completion, relayed from the deployment's node. Returns once the
    node's engine accepted the request (a cold model, or a request the engine
    refuses, raises here, before a stream's 200); the last chunk carries the
    gateway's token counts, and usage is recorded when the iterator ends, however it
    ends (see the module doc). ``stream`` false: the client reads the text whole, so
    the node sends it in one reply at the end (a node lost before then has sent no
    completion tokens, and none are billed). ``tokens`` (a stream): one chunk per
    sampled token, each carrying it (``GenerationChunk.token``)."""
    deployment = _acquire(organization, served)
    return inference_stream_on(
        organization=organization,
        deployment=deployment,
        request=request,
        request_id=request_id,
        stream=stream,
        tokens=tokens,
    )


def inference_stream_on(
    *,
    organization: Organization,
    deployment: Deployment,
    request: GenerationRequest,
    request_id: str,
    stream: bool = True,
    tokens: bool = False,
    service_tier: str = "",
    usage_id: str = "",
) -> Iterator[GenerationChunk]:
    """``inference_stream`` on a deployment already acquired (a batch's runner holds
    its interruptible one); ``service_tier`` goes on the usage (``batch``), whose ids
    are ``usage_id``'s when given (a batch request's, the same on every attempt, so it
    is billed once) and the request's otherwise."""
    queues = relay()
    # In flight (a dedicated replica's load) from here until _relayed's end; every
    # way out before that leaves it here.
    request_enter(deployment=deployment, request_id=request_id)
    try:
        queues.submit(
            deployment_id=deployment.public_id,
            request_id=request_id,
            payload={
                "id": request_id,
                "kind": "generate",
                "stream": stream,
                "tokens": stream and tokens,
                "request": dataclasses.asdict(request),
            },
        )
        replies = _replies(deployment, request_id)
        try:
            first = next(replies)
            if "error" in first:
                raise _reply_error(first, deployment, request_id)
            if not first.get("accepted"):
                raise _protocol_error(deployment, request_id, "no accept before the first chunk")
        except BaseException:
            queues.forget(deployment_id=deployment.public_id, request_id=request_id)
            inference_usage_record(
                organization=organization,
                deployment=deployment,
                request_id=usage_id or request_id,
                prompt_tokens=0,
                completion_tokens=0,
                complete=False,
                service_tier=service_tier,
            )
            raise
        # Accepted: the engine read the prompt, which is billed whatever happens next.
        prompt_tokens = external.prompt_tokens(model=deployment.base_model, request=request)
    except BaseException:
        request_leave(deployment=deployment, request_id=request_id)
        raise
    return _relayed(
        organization=organization,
        deployment=deployment,
        request=request,
        request_id=request_id,
        replies=replies,
        prompt_tokens=prompt_tokens,
        service_tier=service_tier,
        usage_id=usage_id or request_id,
    )


def _relayed(
    *,
    organization: Organization,
    deployment: Deployment,
    request: GenerationRequest,
    request_id: str,
    replies: Iterator[dict[str, Any]],
    prompt_tokens: int,
    service_tier: str,
    usage_id: str,
) -> Iterator[GenerationChunk]:
    received: list[str] = []
    completion: int | None = None  # counted once the last chunk is in
    try:
        for reply in replies:
            if "error" in reply:
                raise _reply_error(reply, deployment, request_id)
            text, finish = reply.get("text"), reply.get("finish_reason")
            if not isinstance(text, str) or (finish is not None and finish not in FINISH_REASONS):
                raise _protocol_error(deployment, request_id, "a chunk without text")
            sampled = _sampled(reply.get("tokens"))
            if sampled is None:
                raise _protocol_error(deployment, request_id, "unreadable tokens")
            received.append(text)
            pieces = _per_token(text, sampled)
            for piece, token in pieces[:-1]:
                yield GenerationChunk(text=piece, token=token)
            piece, token = pieces[-1]
            if finish is None:
                yield GenerationChunk(text=piece, token=token)
                continue
            completion = _completion_tokens(deployment, request, received, stopped=finish == "stop")
            yield GenerationChunk(
                text=piece,
                finish_reason=finish,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                token=token,
            )
            return
    finally:
        try:
            relay().forget(deployment_id=deployment.public_id, request_id=request_id)
            inference_usage_record(
                organization=organization,
                deployment=deployment,
                request_id=usage_id,
                prompt_tokens=prompt_tokens,
                completion_tokens=(
                    completion
                    if completion is not None
                    else _completion_tokens(deployment, request, received, stopped=False)
                ),
                complete=completion is not None,
                service_tier=service_tier,
            )
        finally:
            request_leave(deployment=deployment, request_id=request_id)


def _sampled(value: Any) -> list[SampledToken] | None:
    """A chunk's ``tokens`` as sent by the node (none: an empty list), or None when
    they are not ``{"id", "text", "logprob", "special"}`` objects."""
    if value is None:
        return []
    if not isinstance(value, list):
        return None
    found = []
    for item in value:
        if not isinstance(item, dict):
            return None
        token_id, text = item.get("id"), item.get("text")
        logprob, special = item.get("logprob"), item.get("special")
        if (
            not isinstance(token_id, int)
            or isinstance(token_id, bool)
            or not isinstance(text, str)
            or not isinstance(logprob, float | int)
            or isinstance(logprob, bool)
            or not math.isfinite(logprob)
            or logprob > 0
            or not isinstance(special, bool)
        ):
            return None
        found.append(SampledToken(token_id, text, float(logprob), special))
    return found


def _per_token(text: str, sampled: list[SampledToken]) -> list[tuple[str, SampledToken | None]]:
    """A node's chunk as one piece per token it carries: each token takes the next
    characters of ``text`` as long as its own text (an end token none), the last
    token the rest, so the pieces join to ``text`` exactly (text the engine held
    back, as a possible stop string, comes with a later token than its own). A
    chunk without tokens is one piece."""
    if not sampled:
        return [(text, None)]
    pieces: list[tuple[str, SampledToken | None]] = []
    at = 0
    for token in sampled[:-1]:
        width = 0 if token.special else len(token.text)
        pieces.append((text[at : at + width], token))
        at = min(at + width, len(text))
    pieces.append((text[at:], sampled[-1]))
    return pieces


def _completion_tokens(
    deployment: Deployment, request: GenerationRequest, received: list[str], *, stopped: bool
) -> int:
    """The tokens of the text received, with the model's tokenizer, and one for the end
    when the completion stopped (the model sampled its end token, or a stop string
    that is cut from the text: at least one token either way); never more than the
    request allowed the engine to sample."""
    counted = external.text_tokens(model=deployment.base_model, text="".join(received))
    return min(counted + (1 if stopped else 0), max(int(request.max_tokens), 0))


def embeddings_create(
    *, organization: Organization, served: ServedModel, texts: list[str], request_id: str
) -> EmbeddingResult:
    """Embed ``texts`` on the model's deployment (acquired as a completion's is, so a
    cold model answers 503 in time) and meter the tokens read, counted here with the
    model's tokenizer, as the deployment's ``tokens.prompt``."""
    deployment = _acquire(organization, served)
    return embeddings_create_on(
        organization=organization, deployment=deployment, texts=texts, request_id=request_id
    )


def embeddings_create_on(
    *,
    organization: Organization,
    deployment: Deployment,
    texts: list[str],
    request_id: str,
    service_tier: str = "",
    usage_id: str = "",
) -> EmbeddingResult:
    """``embeddings_create`` on a deployment already acquired (a batch's); usage as
    ``inference_stream_on`` records it."""
    queues = relay()
    request_enter(deployment=deployment, request_id=request_id)
    try:
        queues.submit(
            deployment_id=deployment.public_id,
            request_id=request_id,
            payload={"id": request_id, "kind": "embed", "texts": texts},
        )
        try:
            reply = next(_replies(deployment, request_id))
        finally:
            queues.forget(deployment_id=deployment.public_id, request_id=request_id)
    finally:
        request_leave(deployment=deployment, request_id=request_id)
    if "error" in reply:
        raise _reply_error(reply, deployment, request_id)
    vectors = reply.get("vectors")
    if (
        not isinstance(vectors, list)
        or len(vectors) != len(texts)
        or not all(
            isinstance(row, list)
            and all(isinstance(x, float | int) and math.isfinite(x) for x in row)
            for row in vectors
        )
    ):
        raise _protocol_error(deployment, request_id, "no vectors, one per input")
    prompt_tokens = external.embedding_tokens(model=deployment.base_model, texts=texts)
    inference_usage_record(
        organization=organization,
        deployment=deployment,
        request_id=usage_id or request_id,
        prompt_tokens=prompt_tokens,
        completion_tokens=0,
        complete=True,
        service_tier=service_tier,
    )
    return EmbeddingResult(vectors=vectors, prompt_tokens=prompt_tokens)
