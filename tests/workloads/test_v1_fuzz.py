"""Hostile /v1/ bodies: generated request bodies for every JSON POST of the OpenAI- and
Together-compatible surface, near-valid and hostile (wrong types, huge integers, lone
surrogates, NUL characters, deep nesting, extra fields). None may answer 5xx, and
every error must come in OpenAI's shape naming what it can.

The bodies that pass every check reach the real engine on the tiny model, through a
deployment made ready for the module (no market in the loop); the strategies keep
those few and short (``max_tokens`` stays tiny unless it is hostile)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.workloads.stand_in_node import served_deployment

from .conftest import SAMPLE_CHAT, jsonl

pytestmark = pytest.mark.django_db

TINY = "tandem/tiny-llama"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- values ------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udc00\ud800", "x" * 5 + "\udc80"])
HUGE = st.one_of(
    st.integers(min_value=2**63, max_value=10**4000),
    st.integers(max_value=-1, min_value=-(10**4000)),
    st.just(2**70),
)


def _deep(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


DEEP = st.integers(min_value=17, max_value=400).map(_deep)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10, max_value=10),
    HUGE,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    SURROGATES,
    st.just("a\x00b"),
)
HOSTILE = (
    st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=8,
    )
    | DEEP
)


def _body(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """``base`` with some fields made hostile, some dropped, some added; or no object
    at all."""
    keys = sorted(base)
    mutated = st.fixed_dictionaries(
        {},
        optional={
            "replace": st.dictionaries(st.sampled_from(keys), HOSTILE, max_size=3),
            "drop": st.lists(st.sampled_from(keys), max_size=2),
            "extra": st.dictionaries(
                st.one_of(st.text(max_size=8), SURROGATES), HOSTILE, max_size=2
            ),
        },
    ).map(
        lambda m: {
            **{k: v for k, v in base.items() if k not in m.get("drop", [])},
            **m.get("extra", {}),
            **m.get("replace", {}),
        }
    )
    return st.one_of(mutated, mutated, mutated, HOSTILE)


def _message() -> st.SearchStrategy[Any]:
    near = st.fixed_dictionaries(
        {
            "role": st.one_of(st.sampled_from(["user", "system", "assistant"]), HOSTILE),
            "content": st.one_of(
                st.just("Hi"),
                SURROGATES,
                HOSTILE,
                st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": HOSTILE})),
            ),
        }
    )
    return st.one_of(near, HOSTILE)


CHAT = {"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"model": TINY, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
GENERATION_EXTRAS = {
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["\n"],
    "seed": 3,
    "n": 1,
    "stream": False,
    "stream_options": {"include_usage": True},
    "max_completion_tokens": 2,
}


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
STRUCTURED = st.sampled_from(
    [
        {"response_format": {"type": "json_object"}},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "person",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                    "strict": True,
                },
            }
        },
        {"tools": [TOOL], "tool_choice": "required"},
        {"tools": [TOOL], "tool_choice": "auto", "parallel_tool_calls": False},
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ]
)


def _chat_bodies() -> st.SearchStrategy[Any]:
    with_messages = st.builds(
        lambda messages, body: (
            {**body, "messages": messages}
            if isinstance(body, dict) and "messages" in body
            else body
        ),
        st.lists(_message(), min_size=1, max_size=3),
        _body({**CHAT, **GENERATION_EXTRAS}),
    )
    structured = STRUCTURED.flatmap(lambda extra: _body({**CHAT, **GENERATION_EXTRAS, **extra}))
    return st.one_of(with_messages, _body({**CHAT, **GENERATION_EXTRAS}), structured)


OPENAI_JOB = {
    "model": TINY,
    "training_file": "FILE",
    "validation_file": None,
    "suffix": "adder",
    "seed": 7,
    "metadata": {"team": "a"},
    "hyperparameters": {"n_epochs": 1, "batch_size": "auto", "learning_rate_multiplier": 1.0},
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
}
TOGETHER_JOB = {
    "model": TINY,
    "training_file": "FILE",
    "n_epochs": 1,
    "n_checkpoints": 1,
    "n_evals": 0,
    "batch_size": 8,
    "learning_rate": 1e-4,
    "lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0}},
    "warmup_ratio": 0.0,
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "suffix": "adder",
    "random_seed": 1,
    "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
    "training_method": {"method": "sft", "train_on_inputs": "auto"},
}


def _with_file(body: Any, file_id: str) -> Any:
    if isinstance(body, dict) and body.get("training_file") == "FILE":
        return {**body, "training_file": file_id}
    return body


# --- the server side ---------------------------------------------------------------


@pytest.fixture
def buyer(cast):  # type: ignore[no-untyped-def]
    return cast.client(cast.buyer_a)


@pytest.fixture
def training_file(buyer) -> str:  # type: ignore[no-untyped-def]
    answer = buyer.post(
        "/v1/files",
        {"purpose": "fine-tune", "file": SimpleUploadedFile("t.jsonl", jsonl(SAMPLE_CHAT))},
        format="multipart",
    )
    assert answer.json()["status"] == "processed"
    return answer.json()["id"]


@pytest.fixture
def ready_deployment(cast) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The tiny model served by a ready deployment: its real engine, behind the node's
    replies (runtime.serve), on a stand-in node in this process."""
    from runtime.inference import Engine

    engine = Engine(model=TINY)
    try:
        with served_deployment(cast, engine=engine) as (deployment_id, _):
            yield deployment_id
    finally:
        engine.close()


def _post(client, path: str, body: Any):  # type: ignore[no-untyped-def]
    return client.generic("POST", path, json.dumps(body), "application/json")


def _assert_answer(answer, path: str, body: Any) -> None:  # type: ignore[no-untyped-def]
    event(f"status {answer.status_code}")
    assert answer.status_code < 500, (path, body, answer.content[:500])
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
    elif answer.status_code == 200 and answer.get("Content-Type", "").startswith(
        "text/event-stream"
    ):
        events = b"".join(answer.streaming_content).decode()
        assert events.endswith("data: [DONE]\n\n") or '"error"' in events


# --- the fuzz ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@FUZZ
@given(body=_chat_bodies())
def test_chat_completions_never_answer_5xx(buyer, ready_deployment, body):
    _assert_answer(_post(buyer, "/v1/chat/completions", body), "chat", body)


@pytest.mark.django_db(transaction=True)
@FUZZ
@given(
    body=_body({**COMPLETION, **GENERATION_EXTRAS, "prompt": "Hello"})
    | _body({**COMPLETION, "prompt": ["Hi"]})
)
def test_completions_never_answer_5xx(buyer, ready_deployment, body):
    _assert_answer(_post(buyer, "/v1/completions", body), "completions", body)


@pytest.mark.django_db(transaction=True)
@settings(FUZZ, max_examples=40)
@given(
    body=_body({"model": TINY, "input": ["Hello", "world"], "encoding_format": "float"})
    | _body({"model": TINY, "input": "Hello", "encoding_format": "base64", "user": "u-1"})
)
def test_embeddings_never_answer_5xx(buyer, ready_deployment, body):
    _assert_answer(_post(buyer, "/v1/embeddings", body), "embeddings", body)


@FUZZ
@given(body=_body(OPENAI_JOB))
def test_openai_job_creation_never_answers_5xx(buyer, training_file, body):
    body = _with_file(body, training_file)
    _assert_answer(_post(buyer, "/v1/fine_tuning/jobs", body), "jobs", body)


@FUZZ
@given(body=_body(TOGETHER_JOB), estimate=st.booleans())
def test_together_fine_tunes_and_estimates_never_answer_5xx(buyer, training_file, body, estimate):
    body = _with_file(body, training_file)
    path = "/v1/fine-tunes/estimate-price" if estimate else "/v1/fine-tunes"
    _assert_answer(_post(buyer, path, body), path, body)


@settings(FUZZ, max_examples=25)
@given(body=HOSTILE | _body({"purpose": "fine-tune"}), known=st.booleans())
def test_preprocess_never_answers_5xx(buyer, training_file, body, known):
    file_id = training_file if known else "file-missing"
    path = f"/v1/files/{file_id}/preprocess"
    _assert_answer(_post(buyer, path, body), path, body)


@settings(FUZZ, max_examples=30)
@given(
    body=_body(
        {"purpose": "fine-tune", "file_name": "t.jsonl", "file_type": "jsonl", "checksum": "0" * 64}
    )
)
def test_together_upload_announcements_never_answer_5xx(buyer, body):
    _assert_answer(_post(buyer, "/v1/files", body), "files", body)
