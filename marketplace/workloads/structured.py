"""Structured output and tools on the /v1/ surface: ``response_format``, ``tools`` and
``tool_choice`` read from a chat request, and a tool call read back from the text.

The runtime constrains decoding to a JSON schema (runtime/structured.py, xgrammar);
this module decides which schema:

- ``response_format`` ``{"type": "json_object"}``: any JSON object;
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``: that schema
  (``strict`` false lets the model add properties the schema does not forbid);
  ``{"type": "text"}``: no constraint.
- ``tools`` with ``tool_choice`` ``required``: a call to any of them, written as
  ``{"name": <a tool's name>, "arguments": <its parameters' schema>}``; a named
  function (``{"type": "function", "function": {"name"}}``): a call to that one;
  ``auto`` (the default with tools): the model writes freely and the answer is a
  call when its text is exactly such an object; ``none``: plain text. The chat
  template shows the model the definitions in every case.
- ``parallel_tool_calls`` (true unless the request says false, as OpenAI's): the
  answer may also be a JSON list of such objects, each matching its own tool's
  parameters (the chat template renders several calls so, a single call as the bare
  object). A list of one is allowed too: a list may be closed after any call, so a
  model that opened one can still finish within its token budget (the closing
  reserve, runtime/structured.py); one that had to write a second whole call could
  not. False: one call only. Each call gets its own id.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from marketplace.workloads.errors import invalid

MAX_TOOLS = 128
# The schema text a request may bring; compiling a grammar is bounded by its size.
MAX_SCHEMA_CHARS = 65_536
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Structure:
    """What a chat request asks of its answer's form."""

    json_schema: str | None = None
    json_schema_field: str = "response_format"
    json_schema_strict: bool = True
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "none"  # none | auto | required | function
    parallel_tool_calls: bool = True


def _canonical(schema: Any, *, param: str) -> str:
    try:
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise invalid(f"{param} must be JSON (no NaN or infinity)", param=param) from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise invalid(
            f"{param} is {len(text)} characters of JSON; at most {MAX_SCHEMA_CHARS}", param=param
        )
    return text


def _object(value: Any, *, param: str, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{param} must be an object", param=param)
    return value


def _name(value: Any, *, param: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise invalid(
            f"{param} must be 1 to 64 letters, digits, underscores or dashes", param=param
        )
    return value


def _response_format(value: Any) -> tuple[str, str, bool] | None:
    """(schema text, the field it came from, strict) or None for plain text."""
    if value is None:
        return None
    body = _object(value, param="response_format")
    kind = body.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _canonical({"type": "object"}, param="response_format"), "response_format", True
    if kind != "json_schema":
        raise invalid(
            "response_format.type must be text, json_object or json_schema",
            param="response_format.type",
        )
    spec = _object(body.get("json_schema"), param="response_format.json_schema")
    _name(spec.get("name"), param="response_format.json_schema.name")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid(
            "response_format.json_schema.description must be a string",
            param="response_format.json_schema.description",
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid(
            "response_format.json_schema.strict must be true or false",
            param="response_format.json_schema.strict",
        )
    field = "response_format.json_schema.schema"
    schema = _object(spec.get("schema"), param=field, required=False)
    return _canonical(schema, param=field), field, strict is not False


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or len(value) > MAX_TOOLS:
        raise invalid(f"tools must be a list of 1 to {MAX_TOOLS} functions", param="tools")
    tools = []
    seen: set[str] = set()
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        tool = _object(tool, param=where)
        if tool.get("type", "function") != "function":
            raise invalid(f"{where}.type must be function", param=f"{where}.type")
        function = _object(tool.get("function"), param=f"{where}.function")
        name = _name(function.get("name"), param=f"{where}.function.name")
        if name in seen:
            raise invalid(
                f"{where}.function.name {name!r} is used twice", param=f"{where}.function.name"
            )
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid(
                f"{where}.function.description must be a string",
                param=f"{where}.function.description",
            )
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise invalid(
                f"{where}.function.strict must be true or false", param=f"{where}.function.strict"
            )
        parameters = _object(
            function.get("parameters"), param=f"{where}.function.parameters", required=False
        ) or {"type": "object", "properties": {}}
        clean: dict[str, Any] = {"name": name, "parameters": parameters}
        if description:
            clean["description"] = description
        tools.append({"type": "function", "function": clean})
    return tools


def _tool_choice(value: Any, names: list[str]) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if value in ("none", "auto", "required"):
        return str(value), None
    if isinstance(value, dict) and value.get("type") == "function":
        function = _object(value.get("function"), param="tool_choice.function")
        name = function.get("name")
        if name not in names:
            raise invalid(
                f"tool_choice.function.name {name!r} is not one of the tools",
                param="tool_choice.function.name",
            )
        return "function", str(name)
    raise invalid(
        'tool_choice must be "none", "auto", "required" or '
        '{"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            "arguments": function["parameters"],
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def structure(body: dict[str, Any]) -> Structure:
    """The answer's form a chat body asks for, every field checked."""
    formatted = _response_format(body.get("response_format"))
    if body.get("tools") is None:
        if body.get("tool_choice") is not None:
            raise invalid("tool_choice needs tools", param="tool_choice")
        if formatted is None:
            return Structure()
        schema, field, strict = formatted
        return Structure(json_schema=schema, json_schema_field=field, json_schema_strict=strict)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("parallel_tool_calls must be true or false", param="parallel_tool_calls")
    parallel = parallel is not False
    tools = _tools(body["tools"])
    names = [tool["function"]["name"] for tool in tools]
    choice, named = _tool_choice(body.get("tool_choice"), names)
    if choice in ("none", "auto"):
        if formatted is not None and choice == "auto":
            raise invalid(
                "response_format with tools needs tool_choice none (the answer is either "
                "a call or a document, not both)",
                param="response_format",
            )
        if formatted is None:
            return Structure(tools=tools, tool_choice=choice, parallel_tool_calls=parallel)
        schema, field, strict = formatted
        return Structure(
            json_schema=schema,
            json_schema_field=field,
            json_schema_strict=strict,
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=parallel,
        )
    if formatted is not None:
        raise invalid(
            f"response_format cannot be combined with tool_choice {choice}: the answer is a call",
            param="response_format",
        )
    chosen = [t for t in tools if t["function"]["name"] == named] if named else tools
    schemas = [_call_schema(tool) for tool in chosen]
    call: dict[str, Any] = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if parallel:
        call = {"anyOf": [call, {"type": "array", "items": call, "minItems": 1}]}
    strict = all(t["function"].get("strict") is not False for t in chosen)
    return Structure(
        json_schema=_canonical(call, param="tools"),
        json_schema_field="tools",
        json_schema_strict=strict,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )


def tool_calls_from(
    text: str, tools: list[dict[str, Any]] | None, *, parallel: bool = True
) -> list[dict[str, Any]] | None:
    """The text as OpenAI's ``tool_calls`` when it is exactly one call
    (``{"name": <a tool's name>, "arguments": {...}}``) or, with ``parallel``, a
    non-empty JSON list of such calls; else None. Each call gets its own id."""
    if not tools:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if isinstance(found, list) and parallel and found:
        calls = found
    elif isinstance(found, dict):
        calls = [found]
    else:
        return None
    names = {tool["function"]["name"] for tool in tools}
    for call in calls:
        if (
            not isinstance(call, dict)
            or set(call) != {"name", "arguments"}
            or call["name"] not in names
            or not isinstance(call["arguments"], dict)
        ):
            return None
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": call["name"],
                "arguments": json.dumps(call["arguments"], ensure_ascii=False),
            },
        }
        for call in calls
    ]
