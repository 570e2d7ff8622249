"""Dataset checks: each bad file is refused with its line and field; good files get
exact token counts; packing keeps every token and keeps examples apart."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from runtime.datasets import IGNORE, DatasetInvalid, dataset_load, dataset_validate, rows_build
from runtime.registry import TINY_MODEL, model_path

from .conftest import SAMPLES

MODEL = TINY_MODEL


def write(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        b"".join(
            (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
            for line in lines
        )
    )
    return path


def chat(*turns: tuple[str, str], **extra) -> dict:
    return {"messages": [{"role": r, "content": c, **extra} for r, c in turns]}


GOOD_CHAT = chat(("user", "Hi"), ("assistant", "Hello"))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([GOOD_CHAT, b"{not json"], "line 2: is not valid JSON"),
        ([GOOD_CHAT, b"\xff\xfe{}"], "line 2: is not valid UTF-8"),
        ([GOOD_CHAT, b"[1, 2]"], "line 2: must be a JSON object"),
        ([GOOD_CHAT, b""], "line 2: is empty"),
        ([GOOD_CHAT, {"input": "x"}], 'line 2: has none of "text", "messages"'),
        ([GOOD_CHAT, {"text": "hello"}], "line 2: is text but the file is messages (from line 1)"),
        ([{"text": "a", "label": 1}], 'line 1: "label" is not a field of the text format'),
        ([{"text": ""}], 'line 1: "text" must not be empty'),
        ([{"text": 3}], 'line 1: "text" must be a string'),
        ([{"prompt": "a"}], 'line 1: "completion" is required'),
        ([{"prompt": "a", "completion": 2}], 'line 1: "completion" must be a string'),
        ([GOOD_CHAT, {"messages": []}], 'line 2: "messages" must be a non-empty list'),
        (
            [GOOD_CHAT, chat(("user", "a"), ("user", "b"))],
            'line 2: "messages[1].role" must alternate user/assistant '
            "(expected assistant, got user)",
        ),
        (
            [chat(("assistant", "a"))],
            'line 1: "messages[0].role" must alternate user/assistant (expected user',
        ),
        (
            [chat(("user", "a"), ("assistant", "b"), ("system", "c"))],
            'line 1: "messages[2].role" system is only allowed as the first turn',
        ),
        ([chat(("user", "a"))], 'line 1: "messages" must contain at least one assistant turn'),
        (
            [{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}],
            'line 1: "messages[1].role" must be one of system, user, assistant',
        ),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "a", "name": "x"},
                        {"role": "assistant", "content": "b"},
                    ]
                }
            ],
            'line 1: "messages[0].name" is not a field of a turn',
        ),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b", "weight": 2},
                    ]
                }
            ],
            'line 1: "messages[1].weight" must be 0 or 1',
        ),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "a", "weight": 1},
                        {"role": "assistant", "content": "b"},
                    ]
                }
            ],
            'line 1: "messages[0].weight" is only allowed on assistant turns',
        ),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b", "weight": 0},
                    ]
                }
            ],
            "line 1: has no tokens to train on",
        ),
        ([{"text": "word " * 600}], "line 1: is 1803 tokens; the model reads at most 512"),
    ],
)
def test_a_bad_line_is_refused_with_its_number_and_field(tmp_path, lines, message):
    path = write(tmp_path, lines)
    with pytest.raises(DatasetInvalid) as caught:
        dataset_validate(path, model=MODEL)
    assert caught.value.message.startswith(message), caught.value.message
    first = caught.value.details["errors"][0]
    assert first["message"].startswith(message)


def test_an_empty_file_and_a_file_too_large_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DatasetInvalid, match="file: has no examples"):
        dataset_validate(empty)
    path = write(tmp_path, [GOOD_CHAT] * 10)
    with pytest.raises(DatasetInvalid, match="bytes; at most 100 are allowed"):
        dataset_validate(path, max_bytes=100)


def test_every_bad_line_is_listed_up_to_twenty(tmp_path):
    path = write(tmp_path, [GOOD_CHAT] + [b"nope"] * 30)
    with pytest.raises(DatasetInvalid) as caught:
        dataset_validate(path)
    assert caught.value.message.endswith("(and 29 more)")
    assert [e["line"] for e in caught.value.details["errors"]] == list(range(2, 22))
    assert caught.value.details["error_count"] == 30


@pytest.fixture(scope="module")
def raw_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(model_path(MODEL) / "tokenizer.json"))


def test_text_and_prompt_completion_token_counts_are_exact(tmp_path, raw_tokenizer):
    bos, eos = raw_tokenizer.token_to_id("<s>"), raw_tokenizer.token_to_id("</s>")
    texts = ["The capital of France is Paris.", "Add two numbers: 2 + 3 = 5."]
    report = dataset_validate(write(tmp_path, [{"text": t} for t in texts]), model=MODEL)
    expected = sum(len(raw_tokenizer.encode(t).ids) + 2 for t in texts)
    assert (report.format, report.examples, report.tokens) == ("text", 2, expected)
    assert bos is not None and eos is not None

    pairs = [("What is the capital of Spain?", " Madrid."), ("2 + 2 =", " 4")]
    report, examples = dataset_load(
        write(tmp_path, [{"prompt": p, "completion": c} for p, c in pairs]), model=MODEL
    )
    prompt_tokens = [len(raw_tokenizer.encode(p).ids) + 1 for p, _ in pairs]
    completion_tokens = [len(raw_tokenizer.encode(c).ids) + 1 for _, c in pairs]
    assert report.tokens == sum(prompt_tokens) + sum(completion_tokens)
    # only the completion (and its end token) is trained
    assert report.trained_tokens == sum(completion_tokens)
    assert examples[0].labels[: prompt_tokens[0]] == [IGNORE] * prompt_tokens[0]


def test_chat_token_counts_follow_the_chat_template_and_mask_all_but_the_assistant(
    tmp_path, raw_tokenizer
):
    record = chat(("system", "Be brief."), ("user", "What is 2 + 3?"), ("assistant", "5."))
    report, [example] = dataset_load(write(tmp_path, [record]), model=MODEL)
    rendered = (
        "<s><|system|>\nBe brief.<|end|>\n<|user|>\nWhat is 2 + 3?<|end|>\n"
        "<|assistant|>\n5.<|end|>\n"
    )
    assert report.tokens == len(raw_tokenizer.encode(rendered).ids)
    assert example.input_ids == raw_tokenizer.encode(rendered).ids
    trained = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE
    ]
    assert raw_tokenizer.decode(trained, skip_special_tokens=False) == "5.<|end|>\n"

    _, [everything] = dataset_load(write(tmp_path, [record]), model=MODEL, train_on_inputs=True)
    assert everything.labels == everything.input_ids


def test_a_turn_with_weight_zero_is_read_but_not_trained(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Wrong answer", "weight": 0},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Right answer"},
        ]
    }
    weighted = dataset_validate(write(tmp_path, [record]), model=MODEL)
    record["messages"][1].pop("weight")
    unweighted = dataset_validate(write(tmp_path, [record]), model=MODEL)
    assert weighted.tokens == unweighted.tokens
    assert weighted.trained_tokens < unweighted.trained_tokens


def test_the_sample_dataset_is_valid_and_the_shape_check_needs_no_torch():
    import subprocess

    code = (
        "import sys; from runtime.datasets import dataset_validate; "
        f"r = dataset_validate({str(SAMPLES / 'chat.jsonl')!r}); "
        "print(r.format, r.examples, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["messages", "74", "False"]


def test_pre_tokenized_parquet_is_checked_row_by_row(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(
        pa.table(
            {
                "input_ids": [[1, 40, 41, 42, 0, 0], [1, 50, 51]],
                "attention_mask": [[1, 1, 1, 1, 0, 0], [1, 1, 1]],
                "labels": [[IGNORE, IGNORE, 41, 42, IGNORE, IGNORE], [IGNORE, 50, 51]],
            }
        ),
        good,
    )
    report, examples = dataset_load(good, model=MODEL)
    assert (report.format, report.examples, report.tokens) == ("parquet", 2, 7)
    assert report.trained_tokens == 4
    assert examples[0].input_ids == [1, 40, 41, 42]

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2], [1, 2, 3]], "labels": [[1, 2], [1, 2]]}), bad)
    with pytest.raises(DatasetInvalid, match=r'^line 2: "labels" has 2 values; input_ids has 3'):
        dataset_validate(bad, model=MODEL)
    extra = tmp_path / "extra.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 99999]], "score": [1.0]}), extra)
    with pytest.raises(DatasetInvalid, match=r'^file: "score" is not a column'):
        dataset_validate(extra, model=MODEL)
    out_of_range = tmp_path / "range.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2], [1, 99999]]}), out_of_range)
    with pytest.raises(DatasetInvalid, match=r'^line 2: "input_ids" must be token ids from 0 to'):
        dataset_validate(out_of_range, model=MODEL)


def test_packing_keeps_every_token_and_keeps_examples_apart():
    _, examples = dataset_load(SAMPLES / "chat.jsonl", model=MODEL)
    rows = rows_build(examples, max_length=128, packing=True)
    unpacked = rows_build(examples, max_length=128, packing=False)
    assert all(len(r.input_ids) <= 128 for r in rows)
    assert sum(len(r.input_ids) for r in rows) == sum(e.tokens for e in examples)
    assert len(rows) < len(unpacked) / 2  # short chat turns pack several to a row
    fill = sum(len(r.input_ids) for r in rows) / (128 * len(rows))
    assert fill > 0.9
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        # each example's first label is dropped: nothing learns its neighbour's start
        assert all(row.labels[i] == IGNORE for i in starts)
    trained = sum(sum(1 for label in r.labels if label != IGNORE) for r in rows)
    assert trained == sum(sum(1 for label in r.labels if label != IGNORE) for r in unpacked)
