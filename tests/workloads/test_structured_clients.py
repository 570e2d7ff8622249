"""Structured output, tools, embeddings and stream shapes through the official clients
against a live server, on the tiny model served by a deployment the market leases:
``openai``'s ``.parse()`` with a Pydantic model, a json_object answer, a tool call
round trip, one with two calls answered by two tool messages, embeddings with their
usage metered; ``together``'s streams (chat and text) with usage on the last chunk and
one chunk per sampled token carrying it, every chunk valid in the client's own
types."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
from pydantic import BaseModel

from metering.models import UsageEvent
from tests.workloads.conftest import openai_client, together_client
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a zone now",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}


class Person(BaseModel):
    name: str
    age: int
    buyer: bool


def test_openai_structured_output_tools_and_embeddings(cast, live_server, demo_node_agent):
    import openai

    provider_with_capacity(cast.provider_a)
    demo_node_agent(cast.provider_a)  # the deployment's engine runs there
    buyer_credit(cast.buyer_a, 25_000_000)
    client = openai_client(live_server, cast.client(cast.buyer_a).raw_key)

    with platform_running():
        # .parse() with a Pydantic model: the answer matches its schema
        parsed = client.chat.completions.parse(
            model=TINY,
            messages=[{"role": "user", "content": "Describe a buyer as JSON."}],
            response_format=Person,
            max_tokens=120,
            seed=3,
        )
        choice = parsed.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Person)
        assert Person.model_validate_json(choice.message.content) == choice.message.parsed

        # json_object: any JSON object
        loose = client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": "Some JSON, please."}],
            response_format={"type": "json_object"},
            max_tokens=60,
            temperature=0,
        )
        assert loose.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(loose.choices[0].message.content), dict)

        # a tool call round trip: the call, its result as a tool message, an answer
        asked = [{"role": "user", "content": "What is the weather in Paris?"}]
        called = client.chat.completions.create(
            model=TINY,
            messages=asked,
            tools=[WEATHER],
            tool_choice="required",
            parallel_tool_calls=False,  # one call, as asked
            max_tokens=80,
        )
        call_choice = called.choices[0]
        assert call_choice.finish_reason == "tool_calls"
        assert call_choice.message.content is None
        (call,) = call_choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        assert set(arguments) == {"city", "celsius"} and isinstance(arguments["celsius"], bool)
        answered = client.chat.completions.create(
            model=TINY,
            messages=[
                *asked,
                call_choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
            ],
            tools=[WEATHER],
            tool_choice="none",
            max_tokens=8,
            seed=1,
        )
        final = answered.choices[0]
        assert final.finish_reason in ("stop", "length") and final.message.tool_calls is None
        assert isinstance(final.message.content, str)
        # the tool's result is part of what the model read
        assert answered.usage.prompt_tokens > called.usage.prompt_tokens
        # a named function: that function's schema
        named = client.chat.completions.create(
            model=TINY,
            messages=asked,
            tools=[WEATHER, {"type": "function", "function": {"name": "noop"}}],
            tool_choice={"type": "function", "function": {"name": "noop"}},
            parallel_tool_calls=False,
            max_tokens=40,
        )
        assert named.choices[0].message.tool_calls[0].function.name == "noop"
        assert json.loads(named.choices[0].message.tool_calls[0].function.arguments) == {}

        # parallel tool calls (OpenAI's default): an answer may be several calls, each
        # matching its own tool; the seed decides how many the model writes (the first
        # three give two calls on the tiny model on a CPU; the others are tried after)
        both = [{"role": "user", "content": "Weather in Paris, and the time?"}]
        for seed in (28, 45, 53, *range(24)):
            several = client.chat.completions.create(
                model=TINY,
                messages=both,
                tools=[WEATHER, CLOCK],
                tool_choice="required",
                max_tokens=160,
                seed=seed,
            )
            if several.choices[0].finish_reason == "tool_calls":
                calls = several.choices[0].message.tool_calls
                for each in calls:
                    jsonschema.validate(
                        json.loads(each.function.arguments), PARAMETERS[each.function.name]
                    )
                if len(calls) >= 2:
                    break
        assert len(calls) >= 2, "no seed gave several calls"
        assert len({each.id for each in calls}) == len(calls)
        results = [
            {"role": "tool", "tool_call_id": each.id, "content": f"result {n}"}
            for n, each in enumerate(calls)
        ]
        # (the definitions left out: the tiny model's 512-token context holds the
        # calls and their results, not all three)
        replied = client.chat.completions.create(
            model=TINY,
            messages=[*both, several.choices[0].message.model_dump(exclude_none=True), *results],
            max_tokens=8,
            seed=1,
        )
        assert replied.choices[0].message.tool_calls is None
        assert isinstance(replied.choices[0].message.content, str)
        # the calls and each result are part of what the model read
        assert replied.usage.prompt_tokens > sum(len(each.function.arguments) for each in calls)
        with pytest.raises(openai.BadRequestError) as not_a_bool:
            client.chat.completions.create(
                model=TINY, messages=both, tools=[CLOCK], parallel_tool_calls="yes"
            )
        assert not_a_bool.value.param == "parallel_tool_calls"

        # embeddings: unit vectors of the model's hidden size; the tokens are metered
        embedded = client.embeddings.create(model=TINY, input=["hello world", "GPU market"])
        assert [d.index for d in embedded.data] == [0, 1]
        for item in embedded.data:
            assert len(item.embedding) == 128
            assert math.isclose(math.sqrt(sum(x * x for x in item.embedding)), 1.0, rel_tol=1e-4)
        assert embedded.usage.prompt_tokens == embedded.usage.total_tokens > 0
        as_base64 = client.embeddings.create(model=TINY, input="hello world")  # the default
        assert as_base64.data[0].embedding == pytest.approx(embedded.data[0].embedding, abs=1e-6)

        # what the server cannot honour is a 400 naming it, never ignored
        with pytest.raises(openai.BadRequestError) as bad_schema:
            client.chat.completions.create(
                model=TINY,
                messages=asked,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "odd", "schema": {"type": "nonsense"}},
                },
            )
        assert bad_schema.value.param == "response_format.json_schema.schema"
        with pytest.raises(openai.BadRequestError) as penalty:
            client.chat.completions.create(model=TINY, messages=asked, frequency_penalty=0.5)
        assert penalty.value.param == "frequency_penalty"
        with pytest.raises(openai.BadRequestError) as dimensions:
            client.embeddings.create(model=TINY, input="hi", dimensions=64)
        assert dimensions.value.param == "dimensions"

    # each embeddings request is billed once, as the deployment's prompt tokens
    usage = UsageEvent.objects.filter(
        buyer=cast.buyer_a, subject_kind="deployment", event_id__startswith="emb-"
    )
    assert len({u.event_id for u in usage}) == 2
    assert {u.type for u in usage} == {"tokens.prompt"}
    assert sum(u.quantity for u in usage) == (
        embedded.usage.prompt_tokens + as_base64.usage.prompt_tokens
    )


def test_together_stream_carries_usage_on_its_last_chunk_in_the_clients_types(
    cast, live_server, demo_node_agent
):
    from together.types.chat import ChatCompletionChunk
    from together.types.completion import Completion
    from together.types.completion_chunk import CompletionChunk, Token

    provider_with_capacity(cast.provider_a)
    demo_node_agent(cast.provider_a)  # the deployment's engine runs there
    buyer_credit(cast.buyer_a, 25_000_000)
    client = together_client(live_server, cast.client(cast.buyer_a).raw_key)

    with platform_running():
        whole = client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": "What is 2 plus 3?"}],
            max_tokens=10,
            seed=4,
            temperature=0.7,
        )
        chunks = list(
            client.chat.completions.create(
                model=TINY,
                messages=[{"role": "user", "content": "What is 2 plus 3?"}],
                max_tokens=10,
                seed=4,
                temperature=0.7,
                stream=True,
            )
        )
        structured = list(
            client.chat.completions.create(
                model=TINY,
                messages=[{"role": "user", "content": "Weather?"}],
                tools=[WEATHER],
                tool_choice="required",
                max_tokens=120,
                seed=0,  # the calls close within the budget
                stream=True,
            )
        )
        text = client.completions.create(model=TINY, prompt="The capital of", max_tokens=4)
        text_whole = client.completions.create(
            model=TINY, prompt="The capital of", max_tokens=12, temperature=0.8, seed=9
        )
        text_chunks = list(
            client.completions.create(
                model=TINY,
                prompt="The capital of",
                max_tokens=12,
                temperature=0.8,
                seed=9,
                stream=True,
            )
        )

    # every chunk is valid in Together's own (strict) types: role on every delta, and
    # each carries the token sampled for it (its id also on the delta)
    for chunk in chunks + structured:
        ChatCompletionChunk.model_validate(chunk.to_dict())
        assert chunk.object == "chat.completion.chunk"
        assert all(c.delta.role == "assistant" for c in chunk.choices)
        token = Token.model_validate(chunk.to_dict()["token"])
        assert chunk.choices[0].delta.token_id == token.id and token.logprob <= 0
    # one chunk per token: sampled at temperature 0.7, the tokens were not all certain
    assert any(Token.model_validate(c.to_dict()["token"]).logprob < 0 for c in chunks)
    # the last chunk finishes and carries the usage, equal to the unstreamed answer's
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.usage is not None and last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content
    # a forced call streams as one tool_calls delta (one or more calls, in order)
    calls = structured[-1].choices[0].delta.tool_calls
    assert structured[-1].choices[0].finish_reason == "tool_calls"
    assert [call.index for call in calls] == list(range(len(calls)))
    for call in calls:
        assert call.function.name == "get_weather" and json.loads(call.function.arguments)
    # a text completion stream: every chunk a CompletionChunk with its token
    tokens = [CompletionChunk.model_validate(c.to_dict()).token for c in text_chunks]
    assert all(c.object == "completion.chunk" for c in text_chunks)
    streamed_text = "".join(c.choices[0].text or "" for c in text_chunks)
    assert streamed_text == text_whole.choices[0].text
    assert "".join(t.text for t in tokens if not t.special) == streamed_text
    assert all(t.logprob <= 0 for t in tokens) and any(t.logprob < 0 for t in tokens)
    assert 0 < len(tokens) <= 12  # one chunk per token sampled, at most max_tokens
    last_text = text_chunks[-1]
    assert last_text.usage is not None
    assert last_text.usage.model_dump() == text_whole.usage.model_dump()
    if last_text.finish_reason == "stop":
        assert tokens[-1].special  # the end token, with its own text
    assert all(not t.special for t in tokens[:-1])
    # a text completion in Together's shape
    Completion.model_validate(text.to_dict())
    assert text.object == "text.completion"
