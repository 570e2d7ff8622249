"""What a request asks of the inference engine and what it gets back: sampling
parameters checked with the field named, text the tokenizer can read, the chunks,
completions and embeddings returned. No torch: the serving process checks requests
with these before they reach the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.errors import InvalidInput
from core.ports import SampledToken

# The generator takes a 64-bit seed; OpenAI's wire type is a signed 64-bit integer.
SEED_MAX = 2**63 - 1
# Below this a temperature is greedy: dividing logits by a float32 that underflows to
# 0 gives NaN probabilities, which multinomial refuses.
MIN_TEMPERATURE = 1e-5


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def text_check(value: object, *, field: str) -> str:
    """``value`` as text the tokenizer can read: a string encodable as UTF-8 (JSON
    lets a lone surrogate such as ``"\\ud800"`` through, and the tokenizer cannot)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: must be a string", details={"field": field})
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{field}: is not valid Unicode (a lone surrogate at character {exc.start})",
            details={"field": field},
        ) from None
    return value


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def check(self) -> None:
        """Every bound, with the field named, before the request joins a batch."""
        if (
            not isinstance(self.max_tokens, int)
            or isinstance(self.max_tokens, bool)
            or not 1 <= self.max_tokens <= 100_000
        ):
            raise InvalidInput(
                "max_tokens: must be a whole number from 1 to 100000",
                details={"field": "max_tokens"},
            )
        if not _is_number(self.temperature) or not 0 <= self.temperature <= 2:
            raise InvalidInput("temperature: must be from 0 to 2", details={"field": "temperature"})
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidInput("top_p: must be in (0, 1]", details={"field": "top_p"})
        if not isinstance(self.stop, tuple) or len(self.stop) > 4:
            raise InvalidInput("stop: at most 4 non-empty strings", details={"field": "stop"})
        for index, stop in enumerate(self.stop):
            text_check(stop, field=f"stop[{index}]")
            if not stop:
                raise InvalidInput(
                    f"stop[{index}]: must not be empty", details={"field": f"stop[{index}]"}
                )
        if self.seed is not None and (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed <= SEED_MAX
        ):
            raise InvalidInput(
                f"seed: must be a whole number from 0 to {SEED_MAX}", details={"field": "seed"}
            )

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a completion. The last has ``finish_reason`` (stop | length) and the
    exact token counts. ``tokens``: for a request that asked for them, the tokens
    sampled since the previous chunk (text held back, as a possible stop string or a
    split character, comes in a later chunk than its token)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens: tuple[SampledToken, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]


def token_piece(decoded: str, attributed: int) -> tuple[str, int]:
    """The text a newly sampled token adds to a completion decoded so far (``decoded``,
    all tokens up to it), given the characters already attributed to earlier tokens:
    a token that ends inside a UTF-8 character (decoded as U+FFFD) adds nothing yet,
    the one completing it adds the character. Answers the piece and the new count."""
    stable = len(decoded)
    while stable > attributed and decoded[stable - 1] == "\ufffd":
        stable -= 1
    if stable <= attributed:
        return "", attributed
    return decoded[attributed:stable], stable


UsageSink = Callable[[str, int, int], None]  # (request id, prompt tokens, completion tokens)


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
