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

from typing import Any

from core.ports import GenerationRequest
from marketplace.workloads.errors import invalid

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


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _messages(value: Any) -> list[dict[str, str]]:
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
                "each message needs a role of system, developer, user or assistant",
                param=f"{where}.role",
            )
        content = message.get("content")
        if isinstance(content, list):  # content parts: the text ones are read
            pieces = []
            for part_index, part in enumerate(content):
                part_where = f"{where}.content[{part_index}]"
                if not isinstance(part, dict):
                    raise invalid(f"{part_where} must be an object", param=part_where)
                if part.get("type", "text") != "text":
                    continue
                if not isinstance(part.get("text"), str):
                    raise invalid(f"{part_where}.text must be a string", param=f"{part_where}.text")
                pieces.append(part["text"])
            content = "".join(pieces)
        if not isinstance(content, str):
            raise invalid(
                f"{where}.content must be a string or a list of text parts",
                param=f"{where}.content",
            )
        clean.append({"role": _ROLES[role], "content": content})
    return clean


def generation_request(body: dict[str, Any], *, chat: bool) -> GenerationRequest:
    """The generation fields of a (chat) completion body, every one checked; the body
    itself has been through ``body_object``."""
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
    if chat:
        return GenerationRequest(messages=_messages(body.get("messages")), **common)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid("prompt must be a string (or a list of one string)", param="prompt")
    return GenerationRequest(prompt=prompt, **common)
