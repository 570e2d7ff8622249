"""The tokens a request samples, reported with its chunks (what Together's stream
chunks carry), and answers of several tool calls on the tiny model: each reported
log-probability is recomputed here from the model's logits through the same
temperature, top-p and grammar mask; the tool-call grammar allows one or more calls
(each matching its own tool's parameters) only where the request allows several."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import pytest
import torch

from marketplace.workloads.structured import structure, tool_calls_from
from runtime.inference import Engine, SamplingParams
from runtime.registry import TINY_MODEL
from runtime.sampling import token_piece
from runtime.structured import Constraint, canonical, closing_reserve

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Rome"]}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, CLOCK]
ASKED = [{"role": "user", "content": "Weather in Paris and the time, please."}]


@pytest.fixture(scope="module")
def engine(model_root):
    from django.conf import settings

    previous = settings.RUNTIME_MODEL_DIR
    settings.RUNTIME_MODEL_DIR = model_root
    engine = Engine(model=TINY_MODEL, deployment_id="dep-tokens", max_batch=8)
    yield engine
    engine.close()
    settings.RUNTIME_MODEL_DIR = previous


def _run(engine: Engine, **kwargs: Any) -> tuple[Any, list[Any], str, str]:
    request = engine.submit(report_tokens=True, **kwargs)
    chunks = list(engine.chunks(request))
    tokens = [token for chunk in chunks for token in chunk.tokens]
    return request, tokens, "".join(c.text for c in chunks), chunks[-1].finish_reason


def _recomputed(
    engine: Engine, request: Any, token_ids: list[int], constraint: Constraint | None
) -> list[tuple[float, bool]]:
    """Each token's log-probability from a fresh forward pass over the prompt and the
    tokens before it, masked by a fresh matcher, at the request's temperature and
    top-p; and whether the engine may have steered it (the closing reserve)."""
    params = request.params
    matcher = engine.grammars().matcher(constraint) if constraint else None
    bitmask = engine.grammars().bitmask(1) if constraint else None
    found: list[tuple[float, bool]] = []
    for k, token in enumerate(token_ids):
        context = torch.tensor([request.prompt_ids + token_ids[:k]], device=engine.device)
        with torch.inference_mode():
            logits = engine.model(input_ids=context).logits[0, -1].float().clone()
        if matcher is not None:
            matcher.fill_next_token_bitmask(bitmask, 0)
            row = logits.unsqueeze(0)
            engine.grammars().apply(row, bitmask, [0])
            logits = row[0]
            assert matcher.accept_token(token)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1:
            ranked, order = torch.sort(probs, descending=True)
            keep = ranked.cumsum(-1) - ranked < params.top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], ranked[keep])
        in_reserve = constraint is not None and request.budget - k <= request.reserve
        found.append((math.log(probs[token] / probs.sum()), in_reserve))
    return found


def test_each_token_carries_its_logprob_under_the_temperature_and_top_p_drawn_from(engine):
    # given a free request sampled at temperature 0.7 and top_p 0.9
    params = SamplingParams(max_tokens=16, temperature=0.7, top_p=0.9, seed=21)
    request, tokens, text, finish = _run(engine, prompt="The capital of France is", params=params)

    # then every sampled token is reported once, in order, with its own text
    assert [t.id for t in tokens] == request.generated
    assert "".join(t.text for t in tokens if not t.special) == text
    assert all(t.special == (t.id in engine.end_ids) for t in tokens)
    if finish == "stop":
        assert tokens[-1].special and tokens[-1].text in ("</s>", "<|end|>")
    # and each log-probability is the one recomputed from the logits
    expected = _recomputed(engine, request, request.generated, None)
    for token, (wanted, _) in zip(tokens, expected, strict=True):
        assert token.logprob <= 0
        assert token.logprob == pytest.approx(wanted, abs=2e-4)
    assert any(t.logprob < -0.01 for t in tokens)  # a real distribution, not all certain


def test_a_constrained_tokens_logprob_is_under_the_grammar_masked_distribution(engine):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
        "additionalProperties": False,
    }
    constraint = Constraint(schema=canonical(schema), field="response_format")
    params = SamplingParams(max_tokens=60, temperature=1.0, seed=5)
    request, tokens, text, _ = _run(engine, messages=ASKED, params=params, constraint=constraint)
    expected = _recomputed(engine, request, request.generated, constraint)
    checked = 0
    for token, (wanted, in_reserve) in zip(tokens, expected, strict=True):
        if in_reserve and token.logprob == 0.0:
            continue  # steered to close the document: picked, with certainty
        assert token.logprob == pytest.approx(wanted, abs=2e-4)
        checked += 1
    assert checked >= 5
    # forced tokens (the grammar allows one) are certain under the masked distribution
    assert any(t.logprob == pytest.approx(0.0, abs=1e-6) for t in tokens)
    assert isinstance(json.loads(text), dict) or request.finish == "length"


def test_a_greedy_pick_is_certain_and_nothing_is_reported_unless_asked(engine):
    _, tokens, _, _ = _run(
        engine, prompt="Hello", params=SamplingParams(max_tokens=6, temperature=0)
    )
    assert tokens and all(t.logprob == 0.0 for t in tokens)
    plain = list(engine.stream(prompt="Hello", params=SamplingParams(max_tokens=6)))
    assert all(chunk.tokens == () for chunk in plain)


def test_a_token_inside_a_utf8_character_adds_no_text_until_it_is_whole():
    assert token_piece("ab\ufffd", 2) == ("", 2)
    assert token_piece("abé", 2) == ("é", 3)
    assert token_piece("abé!", 3) == ("!", 4)


def _tool_constraint(**body: Any) -> Constraint:
    form = structure({"tools": TOOLS, **body})
    assert form.json_schema is not None
    return Constraint(
        schema=form.json_schema, field=form.json_schema_field, strict=form.json_schema_strict
    )


def _valid(call: dict[str, Any]) -> None:
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema[call["function"]["name"]])


def test_the_tool_grammar_allows_several_calls_only_when_parallel(engine):
    two = (
        '[{"name": "get_weather", "arguments": {"city": "Paris", "celsius": true}}, '
        '{"name": "get_time", "arguments": {"zone": "CET"}}]'
    )
    one = '{"name": "get_time", "arguments": {"zone": "UTC"}}'
    grammars = engine.grammars()

    def accepts(constraint: Constraint, text: str) -> bool:
        """The whole text, then an end token: a finished answer."""
        matcher = grammars.matcher(constraint)
        return (
            bool(matcher.accept_string(text))
            and bool(matcher.accept_token(min(engine.end_ids)))
            and matcher.is_terminated()
        )

    parallel = _tool_constraint(tool_choice="required")
    single = _tool_constraint(tool_choice="required", parallel_tool_calls=False)
    assert accepts(parallel, two) and accepts(parallel, one) and accepts(parallel, f"[{one}]")
    assert not accepts(parallel, "[]")
    assert accepts(single, one) and not grammars.matcher(single).accept_string("[")
    # a call whose arguments break its own tool's schema is not in the grammar
    assert not grammars.matcher(parallel).accept_string(
        '[{"name": "get_time", "arguments": {"city"'
    )
    # a named function: one or more calls to that one only
    named = _tool_constraint(tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert accepts(named, f"[{one}, {one}]") and accepts(named, one)
    assert not grammars.matcher(named).accept_string('[{"name": "get_weather"')
    # and the API reads a list as calls only where several were allowed
    calls = tool_calls_from(two, TOOLS)
    assert calls is not None and len({c["id"] for c in calls}) == 2
    assert tool_calls_from(two, TOOLS, parallel=False) is None


def test_the_model_answers_with_several_calls_each_matching_its_tool(engine):
    constraint = _tool_constraint(tool_choice="required")
    answers = []
    for seed in range(40):
        completion = engine.complete(
            messages=ASKED,
            tools=TOOLS,
            params=SamplingParams(max_tokens=160, temperature=1.0, seed=seed),
            constraint=constraint,
        )
        if completion.finish_reason != "stop":
            continue
        calls = tool_calls_from(completion.text, TOOLS)
        assert calls, completion.text  # whatever the grammar let through is calls
        for call in calls:
            _valid(call)
        answers.append(len(calls))
        if len(calls) >= 2 and 1 in answers:
            break
    # some answers were one call, some several: the grammar lets the model choose
    assert 1 in answers and max(answers) >= 2, answers
    # with parallel_tool_calls false every answer is one call
    single = _tool_constraint(tool_choice="required", parallel_tool_calls=False)
    for seed in range(4):
        completion = engine.complete(
            messages=ASKED,
            tools=TOOLS,
            params=SamplingParams(max_tokens=120, temperature=1.0, seed=seed),
            constraint=single,
        )
        if completion.finish_reason == "stop":
            assert json.loads(completion.text)["name"] in ("get_weather", "get_time")


def test_the_chat_template_renders_several_calls_as_a_list(engine):
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": {}}},
        {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": {}}},
    ]
    messages = [
        *ASKED,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        {"role": "tool", "tool_call_id": "c2", "content": "13:00"},
    ]
    text = engine.tokenizer.render_chat(messages, add_generation_prompt=True, tools=TOOLS)
    assert (
        '<|assistant|>\n[{"name": "get_time", "arguments": {}}, '
        '{"name": "get_time", "arguments": {}}]<|end|>'
    ) in text
    assert closing_reserve(160) == 40
