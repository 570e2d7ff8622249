"""Structured output and embeddings on the tiny model: schema-constrained requests
batched with free ones (the free ones decode exactly as alone), outputs that parse and
match their schema, a schema that cannot be followed refused before it joins a batch,
grammars compiled once per schema, tools rendered by the chat template, and
normalized embeddings that do not depend on their batch."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import jsonschema
import pytest

from core.errors import InvalidInput
from runtime.inference import Engine, SamplingParams
from runtime.registry import TINY_MODEL
from runtime.structured import Constraint, canonical, closing_reserve

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"enum": ["buyer", "provider"]},
    },
    "required": ["name", "age", "tags", "kind"],
    "additionalProperties": False,
}
FIELD = "response_format.json_schema.schema"
FREE_PROMPTS = [f"Buyer {n} asks: what is {n} plus {n + 1}?" for n in range(8)]


class RecordingEngine(Engine):
    def __init__(self, **kwargs: Any) -> None:
        self.batches: list[list[str]] = []
        super().__init__(**kwargs)

    def _decode_isolated(self, requests):  # type: ignore[no-untyped-def]
        self.batches.append([r.id for r in requests])
        super()._decode_isolated(requests)


@pytest.fixture(scope="module")
def engine(model_root):
    from django.conf import settings

    previous = settings.RUNTIME_MODEL_DIR
    settings.RUNTIME_MODEL_DIR = model_root
    engine = RecordingEngine(model=TINY_MODEL, deployment_id="dep-structured", max_batch=32)
    yield engine
    engine.close()
    settings.RUNTIME_MODEL_DIR = previous


def _free(n: int) -> SamplingParams:
    if n % 2:
        return SamplingParams(max_tokens=12, temperature=0)
    return SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=100 + n)


def _constrained(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=120, temperature=0 if n % 2 else 0.9, seed=7 + n)


def test_constrained_requests_share_a_batch_with_free_ones_that_decode_as_alone(engine):
    # given each free request's text when it is alone in its batch
    alone = {n: engine.complete(prompt=p, params=_free(n)).text for n, p in enumerate(FREE_PROMPTS)}
    constraint = Constraint(schema=canonical(PERSON), field=FIELD)
    results: dict[str, Any] = {}
    start = threading.Barrier(len(FREE_PROMPTS) + 4)

    def free(n: int) -> None:
        start.wait()
        results[f"free-{n}"] = engine.complete(
            prompt=FREE_PROMPTS[n], params=_free(n), request_id=f"free-{n}"
        )

    def constrained(n: int) -> None:
        start.wait()
        results[f"json-{n}"] = engine.complete(
            messages=[{"role": "user", "content": f"Person number {n} as JSON, please."}],
            params=_constrained(n),
            constraint=constraint,
            request_id=f"json-{n}",
        )

    # when they are sent at once while the engine is busy, so they decode together
    blocker = engine.submit(prompt="Tell a long story.", params=SamplingParams(max_tokens=48))
    threads = [threading.Thread(target=free, args=(n,)) for n in range(len(FREE_PROMPTS))]
    threads += [threading.Thread(target=constrained, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    list(engine._consume(blocker))

    # then constrained and free requests shared a batch
    shared = [b for b in engine.batches if any(i.startswith("json-") for i in b)]
    assert any(sum(i.startswith("free-") for i in b) >= 4 for b in shared), engine.batches
    # every free request got exactly its text alone
    assert {n: results[f"free-{n}"].text for n in range(len(FREE_PROMPTS))} == alone
    # and every constrained one is a document its schema accepts, ended by the grammar
    for n in range(4):
        completion = results[f"json-{n}"]
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), PERSON)
        assert completion.completion_tokens <= 120


def test_a_schema_that_cannot_be_followed_is_refused_before_it_joins_a_batch(engine):
    batches = len(engine.batches)
    for schema in ('{"type":"nonsense"}', '{"$ref":"#/missing"}', "not json"):
        with pytest.raises(InvalidInput) as refused:
            engine.submit(
                messages=[{"role": "user", "content": "Hi"}],
                constraint=Constraint(schema=schema, field=FIELD),
            )
        assert refused.value.details == {"field": FIELD}
        assert str(refused.value).startswith(f"{FIELD}: ")
    assert len(engine.batches) == batches


def test_a_grammar_is_compiled_once_per_schema(engine):
    grammars = engine.grammars()
    schema = canonical({"type": "object", "properties": {"once": {"type": "boolean"}}})
    before = grammars.compiles
    for _ in range(3):
        engine.complete(
            messages=[{"role": "user", "content": "Hi"}],
            params=SamplingParams(max_tokens=24, temperature=0),
            constraint=Constraint(schema=schema, field=FIELD),
        )
    assert grammars.compiles == before + 1
    # strictness is part of the key: a non-strict schema is another grammar
    engine.submit(
        messages=[{"role": "user", "content": "Hi"}],
        params=SamplingParams(max_tokens=2),
        constraint=Constraint(schema=schema, field=FIELD, strict=False),
    )
    assert grammars.compiles == before + 2


def test_a_tight_budget_still_closes_the_document_or_says_length(engine):
    # greedy on a random model runs digits forever; the closing reserve ends it
    for budget in (12, 20, 40):
        completion = engine.complete(
            messages=[{"role": "user", "content": "A person."}],
            params=SamplingParams(max_tokens=budget, temperature=0),
            constraint=Constraint(
                schema=canonical({"type": "object", "properties": {"n": {"type": "integer"}}}),
                field=FIELD,
            ),
        )
        assert completion.completion_tokens <= budget
        if completion.finish_reason == "stop":
            assert isinstance(json.loads(completion.text), dict)
        else:
            assert completion.finish_reason == "length"
    assert closing_reserve(200) == 50 and closing_reserve(40) == 16 and closing_reserve(4) == 3


def test_the_chat_template_renders_tools_calls_and_results(engine):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    text = engine.tokenizer.render_chat(messages, add_generation_prompt=True, tools=tools)
    assert '"name": "get_weather"' in text.split("<|user|>")[0]  # the definitions first
    assert '<|assistant|>\n{"name": "get_weather", "arguments": {"city": "Paris"}}<|end|>' in text
    assert "<|tool|>\nsunny, 21 C<|end|>" in text
    # without tools the prompt is what it always was
    plain = engine.tokenizer.render_chat(messages[:1], add_generation_prompt=True)
    assert plain == "<s><|user|>\nWeather in Paris?<|end|>\n<|assistant|>\n"
    assert engine.prompt_ids(messages=messages, tools=tools)


def test_embeddings_are_unit_vectors_of_the_hidden_size_whatever_their_batch(engine):
    texts = ["hello world", "The capital of France is Paris, and of Italy, Rome."]
    together = engine.embed(texts)
    alone = engine.embed(texts[:1])
    assert len(together.vectors) == 2
    for vector in together.vectors:
        assert len(vector) == engine.hidden_size == 128
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
    # the short text padded beside a long one embeds as it does alone
    assert all(
        math.isclose(a, b, abs_tol=1e-5)
        for a, b in zip(alone.vectors[0], together.vectors[0], strict=True)
    )
    assert together.prompt_tokens == sum(len(engine.tokenizer.prompt_ids(t)) for t in texts)
    with pytest.raises(InvalidInput) as refused:
        engine.embed(["fine", ""])
    assert refused.value.details == {"field": "input[1]"}
