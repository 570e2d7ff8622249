"""/v1/ request bodies at the edge: what any JSON body must be before a view reads
it, and the parsing of a generation request.

A JSON body is a tree of the client's choosing. Before any field is read it must be
an object; no string in it (key or value) may hold a lone surrogate (JSON's
``"\\ud800"`` decodes to one, and neither the tokenizer nor PostgreSQL takes it) or
a NUL character where it may be stored or looked up; and it may nest at most
``MAX_BODY_DEPTH`` levels. Fields are then checked one by one, each error a 400
naming the field as the client wrote it (``messages[2].content``, ``seed``).
"""

from __future__ import annotations

import json
from typing import Any

from core.ports import GenerationRequest
from marketplace.workloads.errors import invalid
from marketplace.workloads.structured import structure

# Our deepest field is a hyperparameter (``method.supervised.hyperparameters.n_epochs``);
# metadata and content parts add a level or two.
MAX_BODY_DEPTH = 16
# OpenAI's seed is a signed 64-bit integer; the generator takes 0 to 2**63 - 1.
SEED_MAX = 2**63 - 1
MAX_STOPS = 4
MAX_TOKENS = 32768


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def _string_problem(value: str, *, nul_ok: bool) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode (a lone surrogate at character {exc.start})"
    if not nul_ok and "\x00" in value:
        return f"must not contain a NUL character (at character {value.index(chr(0))})"
    return None


def body_object(data: Any, *, nul_ok: bool = False) -> dict[str, Any]:
    """``data`` (a parsed request body) as a JSON object whose every string is valid
    Unicode (and, unless ``nul_ok``, free of NUL) and which nests at most
    ``MAX_BODY_DEPTH`` levels; a 400 naming the first place that is not."""
    if not isinstance(data, dict):
        raise invalid(f"the request body must be a JSON object, not {_kind(data)}", param="body")
    stack: list[tuple[Any, str, int]] = [(data, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict):
            items: list[tuple[str | int, Any]] = list(value.items())
        elif isinstance(value, list):
            items = list(enumerate(value))
        else:
            continue
        if depth > MAX_BODY_DEPTH:
            raise invalid(f"{where} is nested deeper than {MAX_BODY_DEPTH} levels", param=where)
        for key, item in items:
            place = _path(where, key)
            if isinstance(key, str):
                problem = _string_problem(key, nul_ok=False)
                if problem:
                    raise invalid(
                        f"a key of {where or 'the body'} {problem}", param=where or "body"
                    )
            if isinstance(item, str):
                problem = _string_problem(item, nul_ok=nul_ok)
                if problem:
                    raise invalid(f"{place} {problem}", param=place)
            elif isinstance(item, dict | list):
                stack.append((item, place, depth + 1))
    return dict(data)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def text(value: Any, *, param: str, required: bool = False) -> str:
    """A string field: absent (or null) is ``""`` unless ``required``."""
    if value is None:
        if required:
            raise invalid(f"{param} is required", param=param, code="missing_required_parameter")
        return ""
    if not isinstance(value, str):
        raise invalid(f"{param} must be a string, not {_kind(value)}", param=param)
    problem = _string_problem(value, nul_ok=False)
    if problem:
        raise invalid(f"{param} {problem}", param=param)
    return value


def _whole(value: Any, *, param: str, low: int, high: int, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{param} must be a whole number from {low} to {high}", param=param)
    return value


def _number(value: Any, *, param: str, low: float, high: float, default: float) -> float:
    if value is None:
        return default
    # NaN fails the comparison; a huge integer compares without becoming a float.
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise invalid(f"{param} must be a number from {low:g} to {high:g}", param=param)
    return float(value)


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_STOPS:
        raise invalid(f"stop must be a string or a list of up to {MAX_STOPS} strings", param="stop")
    for index, stop in enumerate(value):
        if not isinstance(stop, str) or not stop:
            raise invalid("each stop must be a non-empty string", param=f"stop[{index}]")
    return list(value)


_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}

# Every field a generation request may carry. Each one works; those in
# ``_DEFAULT_ONLY`` are accepted only at the value that changes nothing (the
# sampler has no penalties, logprobs or logit bias yet), and anything else is a 400
# naming it — a parameter is never silently ignored.
_COMMON_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "stream_options",
        "user",
    }
)
_CHAT_FIELDS = _COMMON_FIELDS | {
    "messages",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}
_COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt"}
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "echo": (False,),
}


def _known_fields(body: dict[str, Any], *, chat: bool) -> None:
    fields = _CHAT_FIELDS if chat else _COMPLETION_FIELDS
    for name, value in body.items():
        if name in fields or value is None:
            continue
        if name in _DEFAULT_ONLY:
            defaults = _DEFAULT_ONLY[name]
            if not isinstance(value, bool | int | float | dict) or not any(
                type(value) is type(d) and value == d for d in defaults
            ):
                shown = ", ".join(json.dumps(d) for d in defaults[:1])
                raise invalid(
                    f"{name} is not supported by this server (only {shown}, which changes "
                    "nothing); remove it",
                    param=name,
                    code="unsupported_parameter",
                )
            continue
        raise invalid(
            f"{name} is not a parameter of {'chat completions' if chat else 'completions'} "
            "here; remove it",
            param=name,
            code="unknown_parameter",
        )


def _tool_calls(value: Any, *, where: str) -> list[dict[str, Any]]:
    """An assistant message's earlier calls, with ``arguments`` read as JSON objects
    (what chat templates render)."""
    if not isinstance(value, list) or not value:
        raise invalid(f"{where} must be a non-empty list of calls", param=where)
    calls = []
    for index, call in enumerate(value):
        place = f"{where}[{index}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise invalid(f"{place} must be an object with a function", param=place)
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"{place}.id must be a non-empty string", param=f"{place}.id")
        name = call["function"].get("name")
        if not isinstance(name, str) or not name:
            raise invalid(
                f"{place}.function.name must be a non-empty string", param=f"{place}.function.name"
            )
        raw = call["function"].get("arguments")
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise invalid(
                f"{place}.function.arguments must be a JSON object as a string",
                param=f"{place}.function.arguments",
            )
        calls.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    return calls


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid("messages must be a non-empty list", param="messages")
    clean = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object with role and content", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise invalid(
                "each message needs a role of system, developer, user, assistant or tool",
                param=f"{where}.role",
            )
        if message.get("name") is not None:
            # The served models' chat templates have no place for a participant's
            # name (runtime/registry.py: role and content only). Dropping it would
            # answer a prompt the caller did not write (two speakers read as one);
            # folding it into the content would be a prompt the model was not trained
            # on. So it is refused, and the caller decides.
            raise invalid(
                f"{where}.name is not supported: this server's chat templates render a "
                "message's role and content only; put the speaker's name in the content",
                param=f"{where}.name",
                code="unsupported_parameter",
            )
        content = message.get("content")
        if role == "assistant" and message.get("tool_calls") is not None:
            calls = _tool_calls(message["tool_calls"], where=f"{where}.tool_calls")
            if content is not None and not isinstance(content, str):
                raise invalid(f"{where}.content must be a string or null", param=f"{where}.content")
            clean.append({"role": "assistant", "content": content, "tool_calls": calls})
            continue
        if isinstance(content, list):  # content parts: the text ones are read
            pieces = []
            for part_index, part in enumerate(content):
                part_where = f"{where}.content[{part_index}]"
                if not isinstance(part, dict):
                    raise invalid(f"{part_where} must be an object", param=part_where)
                if part.get("type", "text") != "text":
                    # Images, audio, files: not read by these models, so refused
                    # rather than dropped without a word.
                    raise invalid(
                        f"{part_where}.type must be text: this server's models read text only",
                        param=f"{part_where}.type",
                    )
                if not isinstance(part.get("text"), str):
                    raise invalid(f"{part_where}.text must be a string", param=f"{part_where}.text")
                pieces.append(part["text"])
            content = "".join(pieces)
        if not isinstance(content, str):
            raise invalid(
                f"{where}.content must be a string or a list of text parts",
                param=f"{where}.content",
            )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(
                    f"{where}.tool_call_id must name the call this answers",
                    param=f"{where}.tool_call_id",
                )
            clean.append({"role": "tool", "content": content, "tool_call_id": call_id})
            continue
        clean.append({"role": _ROLES[role], "content": content})
    return clean


def generation_request(body: dict[str, Any], *, chat: bool) -> GenerationRequest:
    """The generation fields of a (chat) completion body, every one checked; the body
    itself has been through ``body_object``."""
    _known_fields(body, chat=chat)
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise invalid("user must be a string of up to 256 characters", param="user")
    max_tokens = body.get("max_completion_tokens")
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = body.get("max_tokens"), "max_tokens"
    common: dict[str, Any] = {
        "max_tokens": _whole(max_tokens, param=param, low=1, high=MAX_TOKENS, default=256),
        "temperature": _number(
            body.get("temperature"), param="temperature", low=0.0, high=2.0, default=1.0
        ),
        "top_p": _number(body.get("top_p"), param="top_p", low=0.0, high=1.0, default=1.0),
        "stop": _stops(body.get("stop")),
        "seed": _whole(body.get("seed"), param="seed", low=0, high=SEED_MAX, default=None),
    }
    if common["top_p"] == 0.0:
        raise invalid("top_p must be greater than 0", param="top_p")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n != 1):
        raise invalid("n must be 1: one choice per request", param="n")
    if body.get("stream") is not None and not isinstance(body.get("stream"), bool):
        raise invalid("stream must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options must be an object", param="stream_options")
    if options is not None and set(options) - {"include_usage"}:
        name = sorted(set(options) - {"include_usage"})[0]
        raise invalid(
            f"stream_options.{name} is not supported: only include_usage",
            param=f"stream_options.{name}",
        )
    if options is not None and options.get("include_usage") not in (None, True, False):
        raise invalid(
            "stream_options.include_usage must be true or false",
            param="stream_options.include_usage",
        )
    if chat:
        messages = _messages(body.get("messages"))
        form = structure(body)
        return GenerationRequest(
            messages=messages,
            json_schema=form.json_schema,
            json_schema_field=form.json_schema_field,
            json_schema_strict=form.json_schema_strict,
            tools=form.tools,
            tool_choice=form.tool_choice,
            parallel_tool_calls=form.parallel_tool_calls,
            **common,
        )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid("prompt must be a string (or a list of one string)", param="prompt")
    return GenerationRequest(prompt=prompt, **common)


def embedding_request(body: dict[str, Any], *, max_inputs: int) -> tuple[list[str], str]:
    """The texts and encoding of an embeddings body, every field checked. ``input``
    is a string or a list of 1 to ``max_inputs`` non-empty strings (token arrays are
    not taken: the vectors are of text); ``dimensions`` is refused, the model's
    hidden size being the only one it has."""
    allowed = {"model", "input", "encoding_format", "user"}
    for name, value in body.items():
        if value is None or name in allowed:
            continue
        if name == "dimensions":
            raise invalid(
                "dimensions is not supported: the vectors have the model's hidden size",
                param="dimensions",
                code="unsupported_parameter",
            )
        raise invalid(
            f"{name} is not a parameter of embeddings here; remove it",
            param=name,
            code="unknown_parameter",
        )
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise invalid("user must be a string of up to 256 characters", param="user")
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not 1 <= len(texts) <= max_inputs:
        raise invalid(
            f"input must be a string or a list of 1 to {max_inputs} strings", param="input"
        )
    for index, text in enumerate(texts):
        where = "input" if isinstance(value, str) else f"input[{index}]"
        if not isinstance(text, str) or not text:
            raise invalid(f"{where} must be a non-empty string", param=where)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid("encoding_format must be float or base64", param="encoding_format")
    return list(texts), str(encoding)
