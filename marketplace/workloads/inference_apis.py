"""The inference routes (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``) and the model list, through the gateway to the deployment's
node; streams as server-sent events in each client's shape."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import ApplicationError
from core.ports import GenerationRequest
from core.schema import openai_error_responses
from core.tenancy import get_caller
from marketplace.workloads import gateway, inference, inputs, selectors, shapes
from marketplace.workloads import ports as external
from marketplace.workloads.apis import JSON_OK, V1Api
from marketplace.workloads.completions import (
    EMBEDDING_INPUTS_MAX,
    completion_object,
    embedding_object,
    tool_calls_for,
    usage_object,
)
from marketplace.workloads.errors import (
    invalid,
    openai_error_body,
)

# --- inference -----------------------------------------------------------------------------


_COMPLETION_RESPONSES: dict[Any, Any] = {
    (200, "application/json"): OpenApiResponse(
        response=OpenApiTypes.OBJECT, description="the completion in OpenAI's shape"
    ),
    (200, "text/event-stream"): OpenApiResponse(
        response=OpenApiTypes.STR, description='"stream": true: the chunks as server-sent events'
    ),
    **openai_error_responses(400, 401, 402, 403, 404, 413, 429, 503),
}


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _together_caller(request: Request) -> bool:
    """Whether Together's official client sent the request (its User-Agent is
    ``Together/Python <version>``). Its types differ from OpenAI's where the two APIs
    differ: usage rides on a stream's last chunk (it sends no ``stream_options``), a
    text completion is ``text.completion`` (a chunk ``completion.chunk``), and a
    stream's chunks each carry the token sampled (``token``)."""
    return request.headers.get("User-Agent", "").startswith("Together/")


class _CompletionApi(V1Api):
    chat: bool = True

    def post(self, request: Request) -> Any:
        organization = get_caller(request).organization
        # Text to generate from may hold any character; what is looked up may not.
        body = inputs.body_object(request.data, nul_ok=True)
        model_name = inputs.text(body.get("model"), param="model")
        if not model_name:
            raise invalid("model is required", param="model", code="missing_model")
        generation = inputs.generation_request(body, chat=self.chat)
        stream = body.get("stream") is True
        options = body.get("stream_options") or {}
        together = _together_caller(request)
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        served = inference.model_resolve(organization=organization, name=model_name)
        request_id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        chunks = gateway.inference_stream(
            organization=organization,
            served=served,
            request=generation,
            request_id=request_id,
            stream=stream,
            tokens=together,
        )
        if stream:
            response = StreamingHttpResponse(
                self._stream(
                    chunks,
                    request_id,
                    created,
                    served.name,
                    include_usage=include_usage,
                    together=together,
                    generation=generation,
                ),
                content_type="text/event-stream",
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        return Response(
            completion_object(
                chunks,
                request_id=request_id,
                created=created,
                model=served.name,
                chat=self.chat,
                together=together,
                generation=generation,
            )
        )

    def _stream(
        self,
        chunks: Iterator[Any],
        request_id: str,
        created: int,
        model: str,
        *,
        include_usage: bool,
        together: bool,
        generation: GenerationRequest,
    ) -> Iterator[bytes]:
        """Server-sent events in the caller's client's shape. Chat: every delta
        carries ``role`` (Together's type requires it; OpenAI's allows it). Usage: on
        the chunk that finishes for Together's client; for OpenAI's, with
        ``stream_options.include_usage``, a last chunk with no choices. A request that
        may answer with a tool call is held until it ends (a call is only known
        whole), then sent as one delta: ``tool_calls`` or ``content``. Together's
        client gets one chunk per sampled token, each with its ``token`` (id, text,
        special, logprob; a chat delta also its ``token_id``), and no role-only
        first chunk (it would carry none)."""
        if self.chat:
            kind = "chat.completion.chunk"
        else:
            kind = "completion.chunk" if together else "text_completion"
        base = {"id": request_id, "object": kind, "created": created, "model": model}
        usage = (0, 0)
        hold = self.chat and generation.tools is not None and generation.tool_choice != "none"
        held: list[str] = []
        if self.chat and not together:
            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            yield _sse({**base, "choices": [first]})
        try:
            for chunk in chunks:
                finish = chunk.finish_reason
                text = chunk.text
                if finish is not None:
                    usage = (chunk.prompt_tokens or 0, chunk.completion_tokens or 0)
                extra: dict[str, Any] = {}
                if include_usage:
                    extra["usage"] = None
                if together and finish is not None:
                    extra["usage"] = usage_object(*usage)
                token = chunk.token
                if together and token is not None:
                    extra["token"] = {
                        "id": token.id,
                        "text": token.text,
                        "logprob": token.logprob,
                        "special": token.special,
                    }
                if self.chat:
                    delta: dict[str, Any] = {"role": "assistant"}
                    if together and token is not None:
                        delta["token_id"] = token.id
                    if hold:
                        held.append(text)
                        text = "" if finish is None else "".join(held)
                        calls = tool_calls_for(text, finish, generation) if finish else None
                        if calls is not None:
                            delta["tool_calls"] = [
                                {"index": n, **call} for n, call in enumerate(calls)
                            ]
                            finish, text = "tool_calls", ""
                    if text:
                        delta["content"] = text
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
                else:
                    choice = {
                        "index": 0,
                        "text": text,
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                    if together:
                        extra["finish_reason"] = finish
                if text or finish is not None or "token" in extra:
                    yield _sse({**base, "choices": [choice], **extra})
        except ApplicationError as exc:
            # The 200 is out: the error goes as an event in OpenAI's shape, which both
            # clients raise, and the stream ends.
            yield _sse(openai_error_body(exc))
            return
        if include_usage and not together:
            # OpenAI's last chunk: no choices, the request's exact usage.
            yield _sse({**base, "choices": [], "usage": usage_object(*usage)})
        yield b"data: [DONE]\n\n"


class ChatCompletionApi(_CompletionApi):
    chat = True

    @extend_schema(
        summary="Chat completion (OpenAI/Together)", request=None, responses=_COMPLETION_RESPONSES
    )
    def post(self, request: Request) -> Any:
        return super().post(request)


class CompletionApi(_CompletionApi):
    chat = False

    @extend_schema(
        summary="Text completion (OpenAI/Together)", request=None, responses=_COMPLETION_RESPONSES
    )
    def post(self, request: Request) -> Any:
        return super().post(request)


class EmbeddingsApi(V1Api):
    """``POST /v1/embeddings``: one L2-normalized vector per input from the served
    model (its last hidden states mean-pooled over the input's tokens), billed as
    the deployment's prompt tokens."""

    @extend_schema(
        summary="Create embeddings (OpenAI/Together)",
        request=None,
        responses={
            200: OpenApiResponse(
                response=OpenApiTypes.OBJECT, description="the vectors in OpenAI's list shape"
            ),
            **openai_error_responses(400, 401, 402, 403, 404, 413, 429, 503),
        },
    )
    def post(self, request: Request) -> Response:
        organization = get_caller(request).organization
        body = inputs.body_object(request.data, nul_ok=True)
        model_name = inputs.text(body.get("model"), param="model")
        if not model_name:
            raise invalid("model is required", param="model", code="missing_model")
        texts, encoding = inputs.embedding_request(body, max_inputs=EMBEDDING_INPUTS_MAX)
        served = inference.model_resolve(organization=organization, name=model_name)
        result = gateway.embeddings_create(
            organization=organization,
            served=served,
            texts=texts,
            request_id=f"emb-{uuid.uuid4().hex}",
        )
        return Response(embedding_object(result, encoding=encoding, model=served.name))


class ModelListApi(V1Api):
    """Base models on the market and the caller's own fine-tuned models."""

    @extend_schema(
        operation_id="v1_models_list",
        summary="List models",
        responses={200: JSON_OK, **openai_error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        organization = get_caller(request).organization
        data = [
            {
                "id": card.name,
                "object": "model",
                "created": 0,
                "owned_by": "tandem",
                "type": "chat",
                "context_length": card.context_length,
            }
            for card in external.base_models()
        ]
        for job in selectors.fine_tuned_models(organization=organization):
            data.append(
                {
                    "id": job.fine_tuned_model,
                    "object": "model",
                    "created": shapes.ts(job.finished_at) or 0,
                    "owned_by": f"org-{organization.pk}",
                    "type": "chat",
                    "root": job.model,
                    "parent": job.model,
                }
            )
        return Response({"object": "list", "data": data})


class ModelDetailApi(V1Api):
    @extend_schema(
        summary="Retrieve a model",
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, model: str) -> Response:
        served = inference.model_resolve(organization=get_caller(request).organization, name=model)
        return Response(
            {
                "id": served.name,
                "object": "model",
                "created": shapes.ts(served.created_at) or 0,
                "owned_by": f"org-{served.organization.pk}" if served.organization else "tandem",
            }
        )
