"""The inference engine on the tiny model: deterministic with a seed, streaming equals
non-streaming, exact token counts, concurrent requests batched, usage recorded."""

from __future__ import annotations

import threading

import pytest
from tokenizers import Tokenizer

from metering.models import UsageEvent
from runtime import services
from runtime.inference import Engine, SamplingParams
from runtime.registry import TINY_MODEL, model_path
from runtime.spec import WorkSpec
from runtime.storage import LocalStorage
from runtime.trainer import train
from tests.subjects import deployment_of

from .conftest import spec_dict

PROMPT = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": "Add two numbers: 2 + 3"}]


@pytest.fixture(scope="module")
def engine(model_root):
    from django.conf import settings

    previous = settings.RUNTIME_MODEL_DIR
    settings.RUNTIME_MODEL_DIR = model_root
    engine = Engine(model=TINY_MODEL, deployment_id="dep-test")
    yield engine
    engine.close()
    settings.RUNTIME_MODEL_DIR = previous


@pytest.fixture(scope="module")
def raw_tokenizer(engine) -> Tokenizer:
    return Tokenizer.from_file(str(model_path(TINY_MODEL) / "tokenizer.json"))


def test_the_same_seed_gives_the_same_text(engine):
    params = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=11)
    first = engine.complete(prompt=PROMPT, params=params)
    again = engine.complete(prompt=PROMPT, params=params)
    other = engine.complete(prompt=PROMPT, params=SamplingParams(max_tokens=24, seed=12))
    assert first.text == again.text and first.token_ids == again.token_ids
    assert other.token_ids != first.token_ids


def test_streaming_and_non_streaming_agree(engine):
    for params in (
        SamplingParams(max_tokens=30, temperature=0.8, seed=3),
        SamplingParams(max_tokens=30, temperature=0),
    ):
        whole = engine.complete(messages=MESSAGES, params=params)
        chunks = list(engine.stream(messages=MESSAGES, params=params))
        assert "".join(c.text for c in chunks) == whole.text
        assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
        last = chunks[-1]
        assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
            whole.finish_reason,
            whole.prompt_tokens,
            whole.completion_tokens,
        )


def test_token_counts_are_the_tokenizers(engine, raw_tokenizer):
    completion = engine.complete(prompt=PROMPT, params=SamplingParams(max_tokens=17, seed=1))
    bos = raw_tokenizer.token_to_id("<s>")
    assert completion.prompt_tokens == len([bos, *raw_tokenizer.encode(PROMPT).ids])
    assert completion.completion_tokens == len(completion.token_ids)
    if completion.finish_reason == "length":
        assert completion.completion_tokens == 17

    chat = engine.complete(messages=MESSAGES, params=SamplingParams(max_tokens=5, seed=1))
    rendered = "<s><|user|>\nAdd two numbers: 2 + 3<|end|>\n<|assistant|>\n"
    assert chat.prompt_tokens == len(raw_tokenizer.encode(rendered).ids)


def test_a_stop_string_ends_the_text_before_it_streamed_or_not(engine):
    free = engine.complete(prompt=PROMPT, params=SamplingParams(max_tokens=40, seed=5))
    assert len(free.text) > 6
    stop = free.text[4:6]
    params = SamplingParams(max_tokens=40, seed=5, stop=(stop,))
    stopped = engine.complete(prompt=PROMPT, params=params)
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.find(stop)]
    assert "".join(c.text for c in engine.stream(prompt=PROMPT, params=params)) == stopped.text


def test_bad_sampling_parameters_name_the_field(engine):
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"^temperature"):
        engine.complete(prompt=PROMPT, params=SamplingParams(temperature=3))
    with pytest.raises(InvalidInput, match=r"^prompt: .* leave no room"):
        engine.complete(prompt="0 1 2 3 " * 200)


def test_concurrent_requests_are_batched(engine):
    before = len(engine.batch_sizes)
    results: dict[int, str] = {}
    params = [SamplingParams(max_tokens=16, seed=i) for i in range(8)]
    requests = [engine.submit(prompt=PROMPT, params=p) for p in params]

    def consume(index: int) -> None:
        results[index] = "".join(c.text for c in engine._consume(requests[index]))

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    batches = engine.batch_sizes[before:]
    assert sum(batches) == 8 and len(batches) <= 2 and max(batches) >= 4
    assert len(results) == 8


@pytest.mark.django_db
def test_an_engine_with_an_adapter_records_each_requests_usage(cast, tmp_path):
    # given an adapter fine-tuned for a few steps
    storage = LocalStorage(tmp_path / "artifacts")
    spec = WorkSpec.from_dict(spec_dict("ft-serve", organization_id=cast.buyer_a.pk))
    assert train(spec, storage=storage, progress_bar=False).status == "succeeded"

    # when a deployment of it (one the platform made: usage of any other is refused)
    # serves a chat completion
    deployment_of(cast.buyer_a, model=TINY_MODEL, public_id="dep-serve")
    sink = services.inference_usage_sink(
        organization_id=cast.buyer_a.pk, deployment_id="dep-serve", model=TINY_MODEL
    )
    served = Engine(
        model=TINY_MODEL,
        adapter_path=str(storage.root / "jobs/ft-serve/final"),
        deployment_id="dep-serve",
        usage=sink,
    )
    try:
        done = served.complete(
            messages=MESSAGES, params=SamplingParams(max_tokens=12, temperature=0), request_id="r1"
        )
        # a stream the client abandons after one chunk is billed for what was generated
        stream = served.stream(
            prompt=PROMPT, params=SamplingParams(max_tokens=200, seed=2), request_id="r2"
        )
        next(stream)
        stream.close()
    finally:
        served.close()

    # then the prompt and completion tokens are usage of the deployment
    rows = {
        row.event_id: row.quantity
        for row in UsageEvent.objects.filter(subject_kind="deployment", subject_id="dep-serve")
    }
    assert rows["dep-serve:r1:prompt"] == done.prompt_tokens
    assert rows["dep-serve:r1:completion"] == done.completion_tokens
    assert 1 <= rows["dep-serve:r2:completion"] < 200
    assert set(rows) == {
        "dep-serve:r1:prompt",
        "dep-serve:r1:completion",
        "dep-serve:r2:prompt",
        "dep-serve:r2:completion",
    }
