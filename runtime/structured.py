"""Structured output: decoding constrained to a JSON schema, with xgrammar.

xgrammar (a C++ grammar engine) turns a JSON schema into a grammar once, then gives,
at every step, a bitmask of the tokens that keep the output a prefix of a document
the schema accepts. That fits the engine's own batched sampler: each constrained
request holds a matcher (its place in the grammar) and fills its row of one bitmask
per step; the rows of the other requests in the batch are left alone, so a free
request decodes exactly as it would without neighbours.

- **Compiled once per schema.** ``Grammars.compile`` keeps an LRU cache keyed by the
  schema's canonical text (compact JSON, key order kept: property order is the order
  the output is written in) and its strictness; a schema xgrammar cannot compile is
  the caller's 400, naming the field it came in.
- **Closing within the budget.** A small or random model may never close a string or
  stop a run of digits by itself, and a document cut by ``max_tokens`` does not parse.
  So in the last ``closing_reserve`` tokens of its budget a constrained request is
  steered: among the tokens the grammar allows it takes the model's best that ends
  the document (an end token), else the longest one that writes what the grammar
  forces next (a required key), else one made only of closing characters (``"]}``),
  else one made only of JSON punctuation; only when the grammar allows none of these
  does the model choose freely. The output still matches the schema (every token is
  one the grammar allows); it is shorter than the model would have written. If even
  then the document is not closed when the budget runs out, the finish reason is
  ``length``, as for any completion cut by ``max_tokens``.

The xgrammar import (it brings triton along) is paid by the first constrained request
of a process, not by the web tier or an engine that never sees one.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from core.errors import InvalidInput

if TYPE_CHECKING:
    import xgrammar

# Compiled grammars kept per engine; a compiled JSON-schema grammar of a small
# schema is a few hundred KiB on a 128k vocabulary.
GRAMMAR_CACHE_SIZE = 256
# The schema text a request may bring (the web tier refuses more, naming the field).
SCHEMA_MAX_CHARS = 65_536

_CLOSERS = frozenset('"]}')
_PUNCTUATION = frozenset('"]},:[{ ')


def closing_reserve(budget: int) -> int:
    """How many of a constrained request's last tokens are steered to close it."""
    return min(max(budget // 4, 16), 64, max(budget - 1, 0))


@dataclass(frozen=True, slots=True)
class Constraint:
    """Decode a JSON document matching ``schema`` (canonical JSON text). ``field``
    names where the schema came from, for the 400 when it does not compile."""

    schema: str
    field: str
    strict: bool = True


def canonical(schema: Any) -> str:
    """The cache key of a schema: compact JSON with key order kept."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _xgrammar_message(exc: Exception) -> str:
    # "[01:55:40] /project/cpp/json_schema_converter.cc:5082: Unsupported type ..."
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", text)


class Grammars:
    """One engine's grammar compiler over its tokenizer, with the cache and the token
    ranks steering uses."""

    def __init__(self, *, tokenizer_path: str, vocab_size: int, end_ids: set[int]) -> None:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast

        self.xgr = xgr
        hf = PreTrainedTokenizerFast(tokenizer_file=tokenizer_path)
        # The model's logits may be wider than the tokenizer's vocabulary (padded
        # embeddings): the bitmask covers the logits' width, extra ids never allowed.
        self.info = xgr.TokenizerInfo.from_huggingface(
            hf, vocab_size=vocab_size, stop_token_ids=sorted(end_ids)
        )
        self.vocab_size = vocab_size
        # xgrammar's own cache is unbounded by default; ours is an LRU of known size.
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2, cache_enabled=False)
        self._cache: OrderedDict[tuple[str, bool], xgrammar.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0  # cache misses, for the benchmark and tests
        # 0: an end token; 1: only closing characters; 2: only JSON punctuation; 3: other.
        ranks = torch.full((vocab_size,), 3, dtype=torch.int8)
        self.texts: list[str] = [""] * vocab_size
        quote_first = torch.zeros((vocab_size,), dtype=torch.bool)
        for token_id in range(min(len(hf), vocab_size)):
            text = str(hf.decode([token_id]))
            self.texts[token_id] = text
            quote_first[token_id] = text.startswith('"')
            if text and set(text) <= _CLOSERS:
                ranks[token_id] = 1
            elif text and set(text) <= _PUNCTUATION:
                ranks[token_id] = 2
        for end in end_ids:
            if 0 <= end < vocab_size:
                ranks[end] = 0
        self.ranks = ranks
        self.quote_first = quote_first

    def compile(self, constraint: Constraint) -> xgrammar.CompiledGrammar:
        key = (constraint.schema, constraint.strict)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            # Compact separators, no free whitespace: a model cannot pad forever.
            compiled = self.compiler.compile_json_schema(
                constraint.schema, any_whitespace=False, strict_mode=constraint.strict
            )
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"{constraint.field}: is not a JSON schema this server can follow "
                f"({_xgrammar_message(exc)[:300]})",
                details={"field": constraint.field},
            ) from None
        with self._lock:
            self.compiles += 1
            self._cache[key] = compiled
            while len(self._cache) > GRAMMAR_CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, constraint: Constraint) -> xgrammar.GrammarMatcher:
        return self.xgr.GrammarMatcher(self.compile(constraint))

    def bitmask(self, rows: int) -> torch.Tensor:
        return self.xgr.allocate_token_bitmask(rows, self.vocab_size)

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
        """Mask the disallowed tokens of ``rows`` of ``logits`` to -inf, in place."""
        device_mask = bitmask.to(logits.device, non_blocking=True)
        self.xgr.apply_token_bitmask_inplace(logits, device_mask, indices=rows)

    def steer(
        self, logits: torch.Tensor, matcher: xgrammar.GrammarMatcher, *, in_string: bool
    ) -> int | None:
        """In the closing reserve: an allowed end token; else the longest allowed
        token writing what the grammar forces next; else the model's best allowed
        closer (inside a string one that starts with its closing quote, outside one
        that does not open another), then punctuation; or None to let the model
        choose."""
        allowed = torch.isfinite(logits)
        ranks = self.ranks.to(logits.device)
        ends = allowed & (ranks == 0)
        if bool(ends.any()):
            return int(torch.where(ends, logits, float("-inf")).argmax().item())
        forced = matcher.find_jump_forward_string()
        if forced:
            ids = allowed.nonzero().flatten().tolist()
            best = max(
                (i for i in ids if self.texts[i] and forced.startswith(self.texts[i])),
                key=lambda i: len(self.texts[i]),
                default=None,
            )
            if best is not None:
                return int(best)
        quote = self.quote_first.to(logits.device)
        closers = allowed & (ranks == 1)
        first, then = (quote, ~quote) if in_string else (~quote, quote)
        for candidates in (closers & first, closers & then, allowed & (ranks == 2)):
            if bool(candidates.any()):
                return int(torch.where(candidates, logits, float("-inf")).argmax().item())
        return None


def inside_string(text: str) -> bool:
    """Whether JSON ``text`` (a valid prefix) ends inside a string: an odd number of
    quotes that no backslash escapes."""
    inside = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and inside:
            escaped = True
        elif char == '"':
            inside = not inside
    return inside
