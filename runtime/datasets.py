"""Training files: validation, token counts, loss masks and sequence packing.

Formats, one per file (the ones buyers already use with Together and OpenAI):

- ``{"text": "..."}``: every token is trained;
- ``{"messages": [{"role", "content", "weight"?}, ...]}``: an optional system turn,
  then user and assistant turns alternating from user, at least one assistant turn;
  ``weight`` (0 or 1, assistant turns only) leaves a turn out of the loss;
- ``{"prompt": "...", "completion": "..."}``: the completion is trained;
- Parquet, pre-tokenized: ``input_ids`` and optionally ``attention_mask`` and
  ``labels`` (-100 where no loss is taken).

Validation runs on the server before any GPU is used and needs no torch (the web
tier calls it for uploaded files): UTF-8, one JSON object per line, one format
throughout, no unknown fields, at least one example, size limits, each example
within the model's context. Every error names the line (or Parquet row) and the
field: ``line 14: "messages"[3].role must alternate user/assistant``.

Token counts use the base model's own tokenizer and are exactly what the trainer
feeds the model, so the price estimate and the bill agree with the work done.
Chat examples are rendered with the model's chat template; the loss covers the
assistant turns only (and only their content and end marker) unless
``train_on_inputs``. The prompt of a prompt/completion pair likewise.

This module reads and checks files; the tokenizer is runtime/tokenizer.py, packing
runtime/packing.py, and what they share (``Example``, ``IGNORE``, ``DatasetInvalid``)
runtime/examples.py. Their names are re-exported here.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidInput
from runtime.examples import IGNORE, DatasetInvalid, Example
from runtime.packing import Row, rows_build
from runtime.registry import model_info
from runtime.tokenizer import TextTokenizer, tokenizer_for

# What the trainer, the engine and the ports take from here, wherever it lives.
__all__ = [
    "FORMATS",
    "IGNORE",
    "MAX_JSON_DEPTH",
    "DatasetInvalid",
    "DatasetProblem",
    "DatasetReport",
    "Example",
    "Row",
    "TextTokenizer",
    "dataset_load",
    "dataset_validate",
    "rows_build",
    "tokenizer_for",
]

MAX_FILE_BYTES = 1024**3
MAX_LINE_BYTES = 4 * 1024**2
MAX_EXAMPLES = 2_000_000
MAX_REPORTED_ERRORS = 20
FORMATS = ("text", "messages", "prompt_completion", "parquet")
ROLES = ("system", "user", "assistant")
# A training record is a few levels deep (a turn in a list in an object); the JSON
# decoder recurses, so a line of brackets must be refused before it is parsed.
MAX_JSON_DEPTH = 64
# Python refuses to turn longer digit strings into integers (a ValueError from json).
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300
_BRACKETS_AND_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


@dataclass(frozen=True, slots=True)
class DatasetProblem:
    line: int  # 1-based line of a JSONL file, or row of a Parquet file; 0: the file
    field: str
    message: str

    def __str__(self) -> str:
        where = "file" if self.line == 0 else f"line {self.line}"
        return (
            f'{where}: "{self.field}" {self.message}' if self.field else f"{where}: {self.message}"
        )


@dataclass(frozen=True, slots=True)
class DatasetReport:
    format: str
    examples: int
    tokens: int  # every token the model reads: what training is billed on
    trained_tokens: int  # tokens that carry a loss
    max_example_tokens: int
    bytes: int


@dataclass(slots=True)
class _Problems:
    found: list[DatasetProblem] = field(default_factory=list)
    total: int = 0

    def add(self, line: int, field_name: str, message: str) -> None:
        self.total += 1
        if len(self.found) < MAX_REPORTED_ERRORS:
            self.found.append(DatasetProblem(line, field_name, message))

    def raise_if_any(self) -> None:
        if not self.total:
            return
        first = str(self.found[0])
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        raise DatasetInvalid(
            first + more,
            details={
                "field": "file",
                "errors": [
                    {"line": p.line, "field": p.field, "message": str(p)} for p in self.found
                ],
                "error_count": self.total,
            },
        )


# --- JSON lines ------------------------------------------------------------------


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests arrays and objects deeper than ``limit``.
    Cheap for ordinary lines: only one with more opening brackets than the limit is
    scanned (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _BRACKETS_AND_STRINGS.finditer(text):
        piece = match.group()
        if piece in "[{":
            depth += 1
            if depth > limit:
                return True
        elif piece in "]}":
            depth -= 1
    return False


def _not_unicode(value: str) -> int | None:
    """Where ``value`` holds a lone surrogate (JSON's ``"\\ud800"`` decodes to one,
    and no tokenizer can read it), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _format_of(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "messages"
    if "text" in record:
        return "text"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    return None


_FIELDS = {
    "text": {"text"},
    "messages": {"messages"},
    "prompt_completion": {"prompt", "completion"},
}


def _unicode_ok(line: int, field_name: str, value: str, problems: _Problems) -> bool:
    at = _not_unicode(value)
    if at is not None:
        problems.add(line, field_name, f"is not valid Unicode (a lone surrogate at character {at})")
    return at is None


def _check_record(line: int, record: dict[str, Any], fmt: str, problems: _Problems) -> bool:
    ok = True
    unknown = sorted(set(record) - _FIELDS[fmt])
    for name in unknown:
        problems.add(line, name, f"is not a field of the {fmt} format")
        ok = False
    if fmt == "text":
        if not isinstance(record.get("text"), str):
            problems.add(line, "text", "must be a string")
            return False
        if not record["text"].strip():
            problems.add(line, "text", "must not be empty")
            return False
        return _unicode_ok(line, "text", record["text"], problems) and ok
    if fmt == "prompt_completion":
        for name in ("prompt", "completion"):
            if name not in record:
                problems.add(line, name, "is required")
                ok = False
            elif not isinstance(record[name], str):
                problems.add(line, name, "must be a string")
                ok = False
            elif not _unicode_ok(line, name, record[name], problems):
                ok = False
        if ok and not record["completion"].strip():
            problems.add(line, "completion", "must not be empty")
            ok = False
        return ok
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.add(line, "messages", "must be a non-empty list of turns")
        return False
    expected = "user"
    assistants = 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.add(line, where, "must be an object with role and content")
            return False
        for name in sorted(set(message) - {"role", "content", "weight"}):
            problems.add(line, f"{where}.{name}", "is not a field of a turn")
            ok = False
        role = message.get("role")
        if role not in ROLES:
            problems.add(line, f"{where}.role", f"must be one of {', '.join(ROLES)}")
            return False
        if not isinstance(message.get("content"), str):
            problems.add(line, f"{where}.content", "must be a string")
            ok = False
        elif not _unicode_ok(line, f"{where}.content", message["content"], problems):
            ok = False
        if role == "system":
            if index != 0:
                problems.add(line, f"{where}.role", "system is only allowed as the first turn")
                ok = False
        elif role != expected:
            problems.add(
                line,
                f"{where}.role",
                f"must alternate user/assistant (expected {expected}, got {role})",
            )
            return False
        else:
            expected = "assistant" if role == "user" else "user"
        if role == "assistant":
            assistants += 1
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                problems.add(line, f"{where}.weight", "is only allowed on assistant turns")
                ok = False
            elif isinstance(weight, bool) or weight not in (0, 1):
                problems.add(line, f"{where}.weight", "must be 0 or 1")
                ok = False
    if assistants == 0:
        problems.add(line, "messages", "must contain at least one assistant turn")
        ok = False
    return ok


def _read_jsonl(
    path: Path,
    fmt: str,
    *,
    tokenizer: TextTokenizer | None,
    train_on_inputs: bool,
    context_length: int | None,
    max_bytes: int,
    max_examples: int,
) -> tuple[str, list[Example], int, int]:
    problems = _Problems()
    size = path.stat().st_size
    if size > max_bytes:
        problems.add(0, "", f"is {size} bytes; at most {max_bytes} are allowed")
        problems.raise_if_any()
    examples: list[Example] = []
    detected: str | None = None if fmt == "auto" else fmt
    first_line = 0
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if len(raw) > MAX_LINE_BYTES:
                problems.add(number, "", f"is {len(raw)} bytes; a line may be {MAX_LINE_BYTES}")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.add(number, "", f"is not valid UTF-8 (byte {exc.start})")
                continue
            if not text.strip():
                problems.add(number, "", "is empty; each line must be one JSON object")
                continue
            if _json_depth_exceeds(text, MAX_JSON_DEPTH):
                problems.add(number, "", f"is nested deeper than {MAX_JSON_DEPTH} levels")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.add(number, "", f"is not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            except ValueError:  # an integer past Python's digit limit
                problems.add(number, "", f"holds an integer of more than {MAX_INT_DIGITS} digits")
                continue
            except RecursionError:  # nesting the scan above let through (it should not)
                problems.add(number, "", f"is nested deeper than {MAX_JSON_DEPTH} levels")
                continue
            if not isinstance(record, dict):
                problems.add(number, "", "must be a JSON object")
                continue
            found = _format_of(record)
            if found is None:
                problems.add(
                    number,
                    "",
                    'has none of "text", "messages" or "prompt"/"completion" '
                    f"(fields: {', '.join(sorted(record)) or 'none'})",
                )
                continue
            if detected is None:
                detected, first_line = found, number
            elif found != detected:
                began = f"line {first_line}" if first_line else "the job's format"
                problems.add(number, "", f"is {found} but the file is {detected} (from {began})")
                continue
            if not _check_record(number, record, detected, problems):
                continue
            count += 1
            if count > max_examples:
                problems.add(number, "", f"is past the limit of {max_examples} examples")
                break
            if tokenizer is None:
                continue
            if detected == "text":
                example = tokenizer.example_text(record["text"])
            elif detected == "prompt_completion":
                example = tokenizer.example_prompt_completion(
                    record["prompt"], record["completion"], train_on_inputs=train_on_inputs
                )
            else:
                example = tokenizer.example_messages(
                    record["messages"], train_on_inputs=train_on_inputs
                )
            if context_length is not None and example.tokens > context_length:
                problems.add(
                    number,
                    "",
                    f"is {example.tokens} tokens; the model reads at most {context_length}",
                )
                continue
            if not any(label != IGNORE for label in example.labels[1:]):
                problems.add(number, "", "has no tokens to train on (every turn has weight 0)")
                continue
            examples.append(example)
    if count == 0 and not problems.total:
        problems.add(0, "", "has no examples; at least one is required")
    problems.raise_if_any()
    return detected or fmt, examples, count, size


# --- Parquet -----------------------------------------------------------------------


def _read_parquet(
    path: Path,
    *,
    vocab_size: int | None,
    context_length: int | None,
    max_examples: int,
    max_bytes: int,
) -> tuple[list[Example], int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    problems = _Problems()
    size = path.stat().st_size
    if size > max_bytes:
        problems.add(0, "", f"is {size} bytes; at most {max_bytes} are allowed")
        problems.raise_if_any()
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        problems.add(0, "", f"is not a readable Parquet file ({exc})")
        problems.raise_if_any()
    allowed = {"input_ids", "attention_mask", "labels"}
    for name in table.column_names:
        if name not in allowed:
            problems.add(0, name, "is not a column of a pre-tokenized file")
    if "input_ids" not in table.column_names:
        problems.add(0, "input_ids", "column is required")
    for name in set(table.column_names) & allowed:
        kind = table.schema.field(name).type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(
            kind.value_type
        ):
            problems.add(0, name, f"must be a list of integers, not {kind}")
    problems.raise_if_any()
    if table.num_rows == 0:
        problems.add(0, "", "has no rows; at least one is required")
    if table.num_rows > max_examples:
        problems.add(0, "", f"has {table.num_rows} rows; at most {max_examples}")
    problems.raise_if_any()
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    examples: list[Example] = []
    for index, ids in enumerate(columns["input_ids"]):
        row = index + 1
        mask = columns["attention_mask"][index] if "attention_mask" in columns else None
        labels = columns["labels"][index] if "labels" in columns else None
        if not ids:
            problems.add(row, "input_ids", "must not be empty")
            continue
        if any(value is None for value in ids):
            problems.add(row, "input_ids", "must not hold nulls")
            continue
        bad = False
        for name, values in (("attention_mask", mask), ("labels", labels)):
            if values is not None and len(values) != len(ids):
                problems.add(row, name, f"has {len(values)} values; input_ids has {len(ids)}")
                bad = True
        if bad:
            continue
        if vocab_size is not None and any(not 0 <= i < vocab_size for i in ids):
            problems.add(row, "input_ids", f"must be token ids from 0 to {vocab_size - 1}")
            continue
        if mask is not None and any(m not in (0, 1) for m in mask):
            problems.add(row, "attention_mask", "must hold only 0 and 1")
            continue
        if labels is not None and any(
            label is None
            or (label != IGNORE and vocab_size is not None and not 0 <= label < vocab_size)
            for label in labels
        ):
            problems.add(row, "labels", f"must be token ids or {IGNORE}")
            continue
        keep = [i for i in range(len(ids)) if mask is None or mask[i] == 1]
        example = Example(
            [ids[i] for i in keep],
            [labels[i] for i in keep] if labels is not None else [ids[i] for i in keep],
        )
        if not example.input_ids:
            problems.add(row, "attention_mask", "masks out every token")
            continue
        if context_length is not None and example.tokens > context_length:
            problems.add(
                row,
                "input_ids",
                f"is {example.tokens} tokens; the model reads at most {context_length}",
            )
            continue
        examples.append(example)
    problems.raise_if_any()
    return examples, size


# --- entry points ---------------------------------------------------------------


def _resolve_format(path: Path, fmt: str) -> str:
    if fmt not in ("auto", *FORMATS):
        raise InvalidInput(
            f"format: must be auto or one of {', '.join(FORMATS)}", details={"field": "format"}
        )
    if fmt == "auto":
        with path.open("rb") as handle:
            magic = handle.read(4)
        return "parquet" if magic == b"PAR1" else "auto"
    return fmt


def dataset_load(
    path: str | Path,
    *,
    model: str | None,
    format: str = "auto",
    train_on_inputs: bool = False,
    max_bytes: int = MAX_FILE_BYTES,
    max_examples: int = MAX_EXAMPLES,
) -> tuple[DatasetReport, list[Example]]:
    """Check a training file and tokenize it with ``model``'s tokenizer. With
    ``model=None`` only the shape is checked (no token counts)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetInvalid(f"file: {path.name} does not exist", details={"field": "file"})
    fmt = _resolve_format(path, format)
    info = model_info(model) if model is not None else None
    tokenizer = tokenizer_for(model) if model is not None else None
    context = info.context_length if info is not None else None
    if fmt == "parquet":
        vocab = info.vocab_size or None if info is not None else None
        # Pre-tokenized labels already say what is trained: train_on_inputs does not apply.
        examples, size = _read_parquet(
            path,
            vocab_size=vocab,
            context_length=context,
            max_examples=max_examples,
            max_bytes=max_bytes,
        )
        count = len(examples)
    else:
        fmt, examples, count, size = _read_jsonl(
            path,
            fmt,
            tokenizer=tokenizer,
            train_on_inputs=train_on_inputs,
            context_length=context,
            max_bytes=max_bytes,
            max_examples=max_examples,
        )
    report = DatasetReport(
        format=fmt,
        examples=count,
        tokens=sum(e.tokens for e in examples),
        trained_tokens=sum(sum(1 for label in e.labels[1:] if label != IGNORE) for e in examples),
        max_example_tokens=max((e.tokens for e in examples), default=0),
        bytes=size,
    )
    return report, examples


def dataset_validate(
    path: str | Path, *, model: str | None = None, format: str = "auto", **limits: int
) -> DatasetReport:
    """The server-side check of an uploaded file: raises ``DatasetInvalid`` (a 400)
    whose message names the first bad line and field and whose details list up to
    twenty; returns the format, example count and exact token counts."""
    report, _ = dataset_load(path, model=model, format=format, **limits)  # type: ignore[arg-type]
    return report
