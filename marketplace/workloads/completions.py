"""A (chat) completion answered whole, in OpenAI's shape (Together's where its client
differs): what ``POST /v1/chat/completions`` and ``/v1/completions`` answer when not
streamed, and what a batch's output file holds for each of its requests, so the two
never differ."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from typing import Any

from core.ports import EmbeddingResult, GenerationChunk, GenerationRequest
from marketplace.workloads.structured import tool_calls_from

# The inputs one embeddings request may carry (each within the model's context).
EMBEDDING_INPUTS_MAX = 128


def tool_calls_for(
    text: str, finish: str | None, generation: GenerationRequest
) -> list[dict[str, Any]] | None:
    """The answer as tool calls, when the request allowed them and the text is one
    (a call cut by max_tokens stays text, with finish_reason length)."""
    if finish != "stop" or generation.tool_choice == "none":
        return None
    return tool_calls_from(text, generation.tools, parallel=generation.parallel_tool_calls)


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_object(
    chunks: Iterable[GenerationChunk],
    *,
    request_id: str,
    created: int,
    model: str,
    chat: bool,
    together: bool,
    generation: GenerationRequest,
) -> dict[str, Any]:
    """The completion whose chunks ``chunks`` are (the gateway's), read to the end."""
    text, finish, usage = [], "stop", (0, 0)
    for chunk in chunks:
        text.append(chunk.text)
        if chunk.finish_reason is not None:
            finish = chunk.finish_reason
            usage = (chunk.prompt_tokens or 0, chunk.completion_tokens or 0)
    content = "".join(text)
    choice: dict[str, Any]
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        calls = tool_calls_for(content, finish, generation)
        if calls is not None:
            message = {**message, "content": None, "tool_calls": calls}
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}
        kind = "text.completion" if together else "text_completion"
    answer: dict[str, Any] = {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage_object(*usage),
        "system_fingerprint": None,
    }
    if together and not chat:
        answer["prompt"] = []  # Together's field for echo, which is not offered
    return answer


def embedding_object(result: EmbeddingResult, *, encoding: str, model: str) -> dict[str, Any]:
    """The vectors in OpenAI's list shape (``encoding`` float or base64)."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _base64_floats(vector) if encoding == "base64" else vector,
        }
        for index, vector in enumerate(result.vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the little-endian float32 bytes, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
