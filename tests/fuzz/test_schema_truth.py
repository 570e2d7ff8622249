"""What the OpenAPI schema says that the fuzzer cannot check by itself: the
``Idempotency-Key`` header is documented exactly where a handler honours it, and a
file's deletion answers what the official openai client parses."""

from __future__ import annotations

from typing import Any

import pytest
from drf_spectacular.generators import EndpointEnumerator, SchemaGenerator

from core.idempotency import HEADER
from core.routing import expand_method_routes


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


def _header(operation: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (
            parameter
            for parameter in operation.get("parameters", [])
            if parameter["in"] == "header" and parameter["name"] == HEADER
        ),
        None,
    )


def test_the_idempotency_key_is_documented_where_a_handler_honours_it(schema):
    honoured, documented = {}, {}
    endpoints = expand_method_routes(EndpointEnumerator().get_api_endpoints())
    for path, _regex, method, callback in endpoints:
        handler = getattr(callback.cls, method.lower(), None)
        required = getattr(handler, "idempotency_key_required", None)
        if required is not None:
            honoured[(method, path)] = required
        operation = schema["paths"].get(path, {}).get(method.lower())
        header = _header(operation) if operation is not None else None
        if header is not None:
            documented[(method, path)] = header.get("required", False)

    assert ("POST", "/api/v1/orders/") in honoured  # the check sees the decorated handlers
    assert documented == honoured


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else node


def test_deleting_a_file_is_documented_as_200_with_the_openai_body(schema):
    responses = schema["paths"]["/v1/files/{file_id}"]["delete"]["responses"]

    assert "204" not in responses
    body = _resolve(schema, responses["200"]["content"]["application/json"]["schema"])
    assert set(body["required"]) == {"id", "object", "deleted"}
    assert body["properties"]["deleted"]["type"] == "boolean"
    assert _resolve(schema, body["properties"]["object"])["enum"] == ["file"]
    error = _resolve(schema, responses["404"]["content"]["application/json"]["schema"])
    assert error["properties"]["error"]["$ref"].endswith("/OpenAIErrorDetail")


def test_every_operation_with_a_body_declares_413_and_415(schema):
    missing = [
        (method, path, code)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
        for code in ("413", "415")
        if code not in operation["responses"]
    ]

    assert missing == []
