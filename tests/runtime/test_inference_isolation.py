"""One buyer's request never fails another's: the engine batches requests of different
buyers, checks each before it joins a batch, and gives each its own error slot.

The faults are planted through the engine's own seams (``_sample`` and ``_forward``,
the steps every request goes through) in a subclass; batching, scheduling, error
slots and the per-request fallback are the real engine's. Every other request must
come back with exactly the text it gets when sent alone."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from core.errors import InvalidInput
from runtime.inference import SEED_MAX, Engine, SamplingParams
from runtime.registry import TINY_MODEL

PROMPTS = [f"Buyer {n} asks: what is {n} plus {n + 1}?" for n in range(20)]


def _params(n: int) -> SamplingParams:
    # half greedy, half sampled with a seed of their own
    if n % 2:
        return SamplingParams(max_tokens=12, temperature=0)
    return SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=1000 + n)


class FaultyEngine(Engine):
    """The real engine with one fault planted: a request whose id starts with
    ``poison-sample`` fails on its third token while being sampled; a batch holding a
    request whose id starts with ``poison-forward`` fails its forward pass once that
    request has three tokens. ``fault`` is what is raised."""

    fault: type[Exception] = RuntimeError

    def __init__(self, **kwargs: Any) -> None:
        self.batches: list[list[str]] = []
        super().__init__(**kwargs)

    def _decode_isolated(self, requests):  # type: ignore[no-untyped-def]
        self.batches.append([r.id for r in requests])
        super()._decode_isolated(requests)

    def _sample(self, logits, request):  # type: ignore[no-untyped-def]
        if request.id.startswith("poison-sample") and len(request.generated) == 2:
            raise self.fault("planted: sampling this request fails")
        return super()._sample(logits, request)

    def _forward(self, requests, **kwargs):  # type: ignore[no-untyped-def]
        if any(r.id.startswith("poison-forward") and len(r.generated) >= 3 for r in requests):
            raise self.fault("planted: a forward pass with this request fails")
        return super()._forward(requests, **kwargs)


@pytest.fixture(scope="module")
def engine(model_root):
    from django.conf import settings

    previous = settings.RUNTIME_MODEL_DIR
    settings.RUNTIME_MODEL_DIR = model_root
    engine = FaultyEngine(model=TINY_MODEL, deployment_id="dep-isolation", max_batch=32)
    yield engine
    engine.close()
    settings.RUNTIME_MODEL_DIR = previous


@pytest.fixture(scope="module")
def alone(engine) -> dict[int, str]:
    """Each buyer's text when its request is the only one in its batch."""
    texts = {}
    for n, prompt in enumerate(PROMPTS):
        before = len(engine.batches)
        texts[n] = engine.complete(prompt=prompt, params=_params(n)).text
        assert [len(b) for b in engine.batches[before:]] == [1]
    return texts


def _concurrently(engine: FaultyEngine, poison_id: str) -> tuple[dict[int, Any], Any]:
    """Twenty buyers and one poisoned request, sent at once from their own threads
    while the engine is busy, so that they are decoded together."""
    results: dict[int, Any] = {}
    poisoned: list[Any] = []
    start = threading.Barrier(len(PROMPTS) + 1)

    def buyer(n: int) -> None:
        start.wait()
        try:
            results[n] = engine.complete(prompt=PROMPTS[n], params=_params(n)).text
        except Exception as exc:
            results[n] = exc

    def attacker() -> None:
        start.wait()
        try:
            poisoned.append(
                engine.complete(
                    messages=[{"role": "user", "content": "Hello"}],
                    params=SamplingParams(max_tokens=12, temperature=0.7, seed=5),
                    request_id=poison_id,
                )
            )
        except Exception as exc:
            poisoned.append(exc)

    # a long request keeps the engine busy while the others queue up behind it
    blocker = engine.submit(prompt="Tell a long story.", params=SamplingParams(max_tokens=64))
    threads = [threading.Thread(target=buyer, args=(n,)) for n in range(len(PROMPTS))]
    threads.append(threading.Thread(target=attacker))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    list(engine._consume(blocker))
    return results, poisoned[0]


def _shared_a_batch(engine: FaultyEngine, poison_id: str) -> int:
    """How many other requests were decoded in the poisoned request's first batch."""
    batch = next(b for b in engine.batches if poison_id in b)
    return len(batch) - 1


@pytest.mark.parametrize("fault", [RuntimeError, InvalidInput])
def test_a_request_whose_sampling_fails_fails_alone(engine, alone, fault):
    # given a fault in one request's sampling: ours (RuntimeError, a 500 for that
    # request) or its input's (InvalidInput, that request's 400)
    engine.fault = fault
    poison_id = f"poison-sample-{fault.__name__}"

    # when twenty buyers send requests at the same moment as the poisoned one
    results, poisoned = _concurrently(engine, poison_id)

    # then they shared a batch, the poisoned request alone failed, with its own error
    assert _shared_a_batch(engine, poison_id) >= 10
    assert isinstance(poisoned, fault) and "planted" in str(poisoned)
    # and every other buyer got the text it gets alone
    assert results == alone


def test_a_forward_pass_that_fails_for_the_batch_fails_only_the_request_that_trips_it(
    engine, alone
):
    # given a request that makes any forward pass it is part of fail, midway
    engine.fault = RuntimeError
    poison_id = "poison-forward-1"

    # when it is decoded together with twenty buyers' requests
    results, poisoned = _concurrently(engine, poison_id)

    # then the batch is redone request by request from where each stood: the poisoned
    # one fails alone and the others finish with the text they get alone
    assert _shared_a_batch(engine, poison_id) >= 10
    assert isinstance(poisoned, RuntimeError)
    assert results == alone
    # and the engine serves on
    assert engine.complete(prompt=PROMPTS[1], params=_params(1)).text == alone[1]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"params": SamplingParams(seed=2**70)}, "seed"),
        ({"params": SamplingParams(seed=SEED_MAX + 1)}, "seed"),
        ({"params": SamplingParams(seed=-1)}, "seed"),
        ({"params": SamplingParams(seed=True)}, "seed"),
        ({"params": SamplingParams(stop=("ok", 5))}, "stop[1]"),  # type: ignore[arg-type]
        ({"params": SamplingParams(stop=("\ud800",))}, "stop[0]"),
        ({"params": SamplingParams(max_tokens=2.5)}, "max_tokens"),  # type: ignore[arg-type]
        ({"params": SamplingParams(top_p=float("nan"))}, "top_p"),
        ({"params": SamplingParams(temperature="1")}, "temperature"),  # type: ignore[arg-type]
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "lone \ud800 surrogate"},
                ]
            },
            "messages[2].content",
        ),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": "Hi"}, "messages"),
        ({"prompt": "x\udfff"}, "prompt"),
    ],
)
def test_bad_input_is_refused_before_it_joins_a_batch(engine, kwargs, field):
    before = len(engine.batches)
    kwargs.setdefault("prompt" if "messages" not in kwargs else "messages", "Hello")
    with pytest.raises(InvalidInput) as refused:
        engine.submit(**kwargs)
    assert refused.value.details["field"] == field
    assert str(refused.value).startswith(f"{field}: ")
    assert len(engine.batches) == before  # it never reached the scheduler


def test_the_largest_seed_and_a_vanishing_temperature_decode(engine):
    # the generator's whole range is usable, and a temperature that underflows float32
    # is greedy rather than NaN probabilities
    largest = engine.complete(prompt=PROMPTS[0], params=SamplingParams(max_tokens=6, seed=SEED_MAX))
    assert largest.completion_tokens >= 1
    tiny = engine.complete(
        prompt=PROMPTS[0], params=SamplingParams(max_tokens=6, temperature=1e-300)
    )
    greedy = engine.complete(prompt=PROMPTS[0], params=SamplingParams(max_tokens=6, temperature=0))
    assert tiny.token_ids == greedy.token_ids
