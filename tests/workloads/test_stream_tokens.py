"""The sampled tokens on their way from the node to a Together stream: asked of the
node only for Together's client, a node's chunk carrying several tokens (its agent
joined them while a post was out) sent as one chunk per token, each valid in the
client's own ``CompletionChunk``; OpenAI's stream unchanged; tokens a node garbles
end the stream with an error instead of a wrong token.

The node is the in-process stand-in (tests/workloads/stand_in_node.py) answering with
chosen replies; the real engine's tokens through the real agent are in
test_structured_clients.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from core.ports import SampledToken
from marketplace.workloads.gateway import _per_token
from tests.workloads.market import platform_running, provider_with_capacity
from tests.workloads.stand_in_node import StandInNode

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"
TOGETHER_AGENT = "Together/Python 3.1.1"


def _token(token_id: int, text: str, logprob: float, special: bool = False) -> dict[str, Any]:
    return {"id": token_id, "text": text, "logprob": logprob, "special": special}


class Answers:
    """Answers "Five." as a node whose agent joined three tokens into one reply, and
    remembers what each request asked of the node."""

    def __init__(self, tokens: Any = None) -> None:
        self.asked: list[dict[str, Any]] = []
        self.tokens = tokens

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.asked.append(item)
        first: dict[str, Any] = {"request": item["id"], "text": "Five", "finish_reason": None}
        last: dict[str, Any] = {"request": item["id"], "text": ".", "finish_reason": "stop"}
        if item.get("tokens"):
            first["tokens"] = self.tokens or [_token(40, "Fi", -0.5), _token(41, "ve", -1.25)]
            last["tokens"] = [_token(7, ".", -0.125), _token(2, "</s>", -0.0625, True)]
        return [{"request": item["id"], "accepted": True}, first, last]


@pytest.fixture
def answers(settings) -> Iterator[Answers]:  # type: ignore[no-untyped-def]
    settings.INFERENCE_START_TIMEOUT_SECONDS = 20
    given = Answers()
    node = StandInNode(answer=given)
    node.start()
    yield given
    node.close()


def _events(response: Any) -> list[Any]:
    body = b"".join(response.streaming_content).decode()
    return [
        json.loads(line[len("data: ") :])
        for line in body.split("\n\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def _stream(client: Any, agent: str | None) -> list[Any]:
    extra = {"HTTP_USER_AGENT": agent} if agent else {}
    response = client.post(
        "/v1/completions",
        {"model": TINY, "prompt": "2 plus 3?", "max_tokens": 8, "stream": True},
        format="json",
        **extra,
    )
    assert response.status_code == 200
    return _events(response)


def test_a_together_stream_gets_one_chunk_per_token_each_with_it(cast, answers):
    from together.types.completion_chunk import CompletionChunk

    provider_with_capacity(cast.provider_a)
    client = cast.client(cast.buyer_a)

    with platform_running():
        together = _stream(client, TOGETHER_AGENT)
        openai = _stream(client, None)

    # the node was asked for tokens by Together's client only
    assert [item["tokens"] for item in answers.asked] == [True, False]
    # one chunk per token, in order, each valid in Together's own type
    chunks = [CompletionChunk.model_validate(event) for event in together]
    assert [(c.token.id, c.token.text, c.token.logprob) for c in chunks] == [
        (40, "Fi", -0.5),
        (41, "ve", -1.25),
        (7, ".", -0.125),
        (2, "</s>", -0.0625),
    ]
    assert [c.choices[0].text for c in chunks] == ["Fi", "ve", ".", ""]
    assert [c.token.special for c in chunks] == [False, False, False, True]
    assert [c.finish_reason for c in chunks] == [None, None, None, "stop"]
    assert chunks[-1].usage is not None and all(c.usage is None for c in chunks[:-1])
    # OpenAI's stream is as it was: the node's chunks, no token
    assert [e["choices"][0]["text"] for e in openai] == ["Five", "."]
    assert all("token" not in e for e in openai)


def test_tokens_a_node_garbles_end_the_stream_with_an_error(cast, settings):
    settings.INFERENCE_START_TIMEOUT_SECONDS = 20
    node = StandInNode(answer=Answers(tokens=[{"id": "forty", "text": "Five"}]))
    node.start()
    provider_with_capacity(cast.provider_a)
    try:
        with platform_running():
            events = _stream(cast.client(cast.buyer_a), TOGETHER_AGENT)
    finally:
        node.close()
    assert events[-1]["error"]["code"] == "generation_failed"
    assert not any("token" in event for event in events)


def test_text_held_back_comes_with_a_later_token_and_the_pieces_join_exactly():
    tokens = [
        SampledToken(5, "ab", -1.0, False),
        SampledToken(6, "cd", -2.0, False),
        SampledToken(2, "</s>", -0.5, True),
    ]
    # the chunk releases text an earlier chunk held back ("x") before its own
    pieces = _per_token("xabcd", tokens)
    assert "".join(text for text, _ in pieces) == "xabcd"
    assert [token for _, token in pieces] == tokens
    assert pieces[-1][0] == "d"  # the end token takes what is left
    # a chunk that holds back part of its tokens' text (a possible stop string)
    held = _per_token("a", tokens[:2])
    assert [text for text, _ in held] == ["a", ""]
    assert _per_token("plain", []) == [("plain", None)]
