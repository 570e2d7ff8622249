"""/v1/ inputs at the edge: a wrong JSON type, a huge integer, a lone surrogate, a NUL
where a name is looked up, wrong nesting — each a 400 in OpenAI's shape naming the
field, before anything reaches the engine, the database or the price book. And an
engine error of one request is that request's answer alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from core.errors import InvalidInput
from marketplace.workloads import inputs

from .conftest import SAMPLE_CHAT, jsonl

pytestmark = pytest.mark.django_db

TINY = "tandem/tiny-llama"
HI = [{"role": "user", "content": "Hi"}]


def _post(client, path: str, body: Any):  # type: ignore[no-untyped-def]
    return client.generic("POST", path, json.dumps(body), "application/json")


def _refused(answer, param: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error


CHAT_CASES = [
    ({"seed": 2**70}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": -1}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ["ok", 3]}, "stop[1]"),
    ({"stop": {"a": 1}}, "stop"),
    ({"stop": "\ud800"}, "stop"),
    ({"max_tokens": 10**5000 // 10**1000}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"temperature": 10**400}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": [1]}, "top_p"),
    ({"n": 2}, "n"),
    ({"n": True}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": []}, "stream_options"),
    ({"model": 5}, "model"),
    ({"model": "tiny\x00"}, "model"),
    ({"model": "\udfff"}, "model"),
    ({"messages": "Hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [["user", "Hi"]]}, "messages[0]"),
    ({"messages": [{"role": ["user"], "content": "Hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": {"text": "Hi"}}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, None),
    (
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "\ud800"},
            ]
        },
        "messages[2].content",
    ),
    ({"messages": [{"role": "user", "content": "x", "\ud800": 1}]}, "messages[0]"),
    ({"user": {"a": [{"b": [{"c": [[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]}]}]}}, None),
    # nothing is silently ignored: an unknown field, or one only at its no-op value
    ({"guided_json": {"type": "object"}}, "guided_json"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"stream_options": {"include_usage": True, "continuous_usage_stats": True}}, None),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, None),
    # structured output and tools
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
        "response_format.json_schema.name",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": []}}},
        "response_format.json_schema.schema",
    ),
    ({"tools": []}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, None),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice.function.name",
    ),
    (
        {
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
        },
        "response_format",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    # a speaker's name has no place in the models' chat templates: refused, not dropped
    (
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": "Yo", "name": "bo"},
            ]
        },
        "messages[1].name",
    ),
]


@pytest.mark.parametrize(("change", "param"), CHAT_CASES)
def test_chat_completion_fields_are_checked_at_the_edge(cast, change, param):
    buyer = cast.client(cast.buyer_a)
    body = {"model": TINY, "messages": HI, "max_tokens": 2, **change}

    error = _refused(_post(buyer, "/v1/chat/completions", body), param or _first_param(body))

    assert error["message"]


def _first_param(body: dict[str, Any]) -> str:
    try:
        inputs.generation_request(inputs.body_object(body, nul_ok=True), chat=True)
    except InvalidInput as exc:
        return str(exc.details["param"])
    raise AssertionError("expected the body to be refused")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": 5}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "x\ud800"}, "prompt"),
        ({"seed": 2**70}, "seed"),
        ({"stop": 5}, "stop"),
    ],
)
def test_completion_fields_are_checked_at_the_edge(cast, change, param):
    buyer = cast.client(cast.buyer_a)
    body = {"model": TINY, "prompt": "Hello", "max_tokens": 2, **change}

    _refused(_post(buyer, "/v1/completions", body), param)


@pytest.mark.parametrize("body", [[], "text", 5, None, [{"model": TINY}]])
def test_a_body_that_is_not_an_object_is_refused(cast, body):
    buyer = cast.client(cast.buyer_a)
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/fine_tuning/jobs",
        "/v1/fine-tunes",
        "/v1/fine-tunes/estimate-price",
        "/v1/files",
    ):
        error = _refused(_post(buyer, path, body), "body")
        assert "must be a JSON object" in error["message"]


@pytest.fixture
def training_file(cast) -> str:  # type: ignore[no-untyped-def]
    answer = cast.client(cast.buyer_a).post(
        "/v1/files",
        {"purpose": "fine-tune", "file": SimpleUploadedFile("t.jsonl", jsonl(SAMPLE_CHAT))},
        format="multipart",
    )
    return answer.json()["id"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"training_file": 5}, "training_file"),
        ({"training_file": "file-\x00"}, "training_file"),
        ({"training_file": "file-\ud800"}, "training_file"),
        ({"suffix": ["a"]}, "suffix"),
        ({"seed": 2**70}, "seed"),
        ({"metadata": {"k": "\ud800"}}, "metadata.k"),
        ({"metadata": {"k": "a\x00"}}, "metadata.k"),
        ({"metadata": []}, "metadata"),
        ({"hyperparameters": {"n_epochs": 10**300}}, "n_epochs"),
        ({"hyperparameters": {"n_epochs": "many"}}, "n_epochs"),
        ({"hyperparameters": {"learning_rate_multiplier": 10**400}}, "learning_rate_multiplier"),
        ({"hyperparameters": [1]}, "hyperparameters"),
        ({"method": {"type": ["supervised"]}}, "method.type"),
        ({"method": {"type": "supervised", "supervised": 5}}, "method.supervised"),
    ],
)
def test_openai_job_fields_are_checked_at_the_edge(cast, training_file, change, param):
    buyer = cast.client(cast.buyer_a)
    body = {"model": TINY, "training_file": training_file, **change}

    _refused(_post(buyer, "/v1/fine_tuning/jobs", body), param)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"n_epochs": 2**70}, "n_epochs"),
        ({"n_epochs": [1]}, "n_epochs"),
        ({"learning_rate": 10**400}, "learning_rate"),
        ({"training_type": {"type": "Lora", "lora_alpha": 10**400}}, "lora_alpha"),
        ({"training_type": {"type": "Lora", "lora_trainable_modules": 5}}, None),
        ({"training_type": {"type": "Lora", "lora_r": 2**70}}, "lora_r"),
        ({"training_type": "Lora"}, "training_type"),
        ({"training_type": {"type": {"x": 1}}}, "training_type.type"),
        ({"lr_scheduler": {"lr_scheduler_args": 5}}, "lr_scheduler.lr_scheduler_args"),
        ({"lr_scheduler": {"lr_scheduler_type": ["cosine"]}}, "lr_scheduler"),
        ({"random_seed": 2**70}, "seed"),
        ({"suffix": "\ud800"}, "suffix"),
        ({"wandb_api_key": "\ud800"}, "wandb_api_key"),
        ({"from_checkpoint": ["ft-0123456789abcdef01234567:2"]}, "from_checkpoint"),
        ({"extra": {"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}}, None),
    ],
)
def test_together_job_fields_are_checked_at_the_edge(cast, training_file, change, param):
    buyer = cast.client(cast.buyer_a)
    body = {"model": TINY, "training_file": training_file, **change}
    if param is None:  # the deepest place, or the module list's own name
        param = (
            "lora_trainable_modules"
            if "training_type" in change
            else "extra.a[0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
        )

    for path in ("/v1/fine-tunes", "/v1/fine-tunes/estimate-price"):
        _refused(_post(buyer, path, body), param)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"purpose": ["fine-tune"]}, "purpose"),
        ({"purpose": "fine-tune\ud800"}, "purpose"),
        ({"file_name": 5}, "file_name"),
        ({"file_name": "t\ud800.jsonl"}, "file_name"),
        ({"file_name": "t\x00.jsonl"}, "file_name"),
        ({"checksum": 10**4000}, "checksum"),
        ({"file_type": {"a": 1}}, "file_type"),
    ],
)
def test_together_upload_announcement_fields_are_checked(cast, change, param):
    buyer = cast.client(cast.buyer_a)
    body = {
        "purpose": "fine-tune",
        "file_name": "t.jsonl",
        "file_type": "jsonl",
        "checksum": "0" * 64,
        **change,
    }

    _refused(_post(buyer, "/v1/files", body), param)


def _boom_or_five(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The node's engine fails a request whose first message is "boom" (after taking
    it: its neighbours in the batch carry on), and answers "Five." to the rest."""
    from tests.workloads.stand_in_node import five

    messages = (item.get("request") or {}).get("messages") or [{}]
    if messages[0].get("content") == "boom":
        return [
            {"request": item["id"], "accepted": True},
            {
                "request": item["id"],
                "error": {"status": 500, "code": "generation_failed", "message": "RuntimeError"},
            },
        ]
    return five(item)


@pytest.fixture
def failing_engines(cast):  # type: ignore[no-untyped-def]
    from tests.workloads.stand_in_node import served_deployment

    with served_deployment(cast, answer=_boom_or_five) as (deployment_id, _):
        yield deployment_id


@pytest.mark.django_db(transaction=True)
def test_an_engine_error_is_that_requests_500_in_openai_shape(cast, failing_engines):
    buyer = cast.client(cast.buyer_a)
    body = {"model": TINY, "messages": [{"role": "user", "content": "boom"}], "max_tokens": 2}

    failed = _post(buyer, "/v1/chat/completions", body)
    fine = _post(buyer, "/v1/chat/completions", {**body, "messages": HI})
    streamed = _post(buyer, "/v1/chat/completions", {**body, "stream": True})

    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "api_error"
    assert failed.json()["error"]["code"] == "generation_failed"
    assert fine.status_code == 200
    assert fine.json()["choices"][0]["message"]["content"] == "Five."
    # a stream whose 200 is out ends with the error as an event, in the same shape
    events = b"".join(streamed.streaming_content).decode()
    assert '"code":"generation_failed"' in events


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"dimensions": 64}, "dimensions"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": [[1, 2, 3]]}, "input[0]"),
        ({"input": "x\ud800"}, "input"),
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"truncate": "END"}, "truncate"),
        ({"model": ""}, "model"),
    ],
)
def test_embeddings_fields_are_checked_at_the_edge(cast, change, param):
    buyer = cast.client(cast.buyer_a)
    body = {"model": TINY, "input": "hello", **change}

    error = _refused(_post(buyer, "/v1/embeddings", body), param)

    assert error["message"]
