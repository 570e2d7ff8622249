"""The inference engine: one per deployment, a base model plus an optional fine-tuned
adapter loaded once, serving completions and chat completions. One module of ~600
lines: the scheduler thread, the batch's KV cache and each request's slot are one
piece of state.

- **Batching.** Requests go into a queue; a scheduler thread takes everything
  pending (up to ``max_batch``) and decodes it together, one forward pass per token
  for the whole batch (left-padded prompts, one KV cache). Requests that arrive
  while a batch runs form the next one. Sixteen concurrent requests cost little more
  than one on a GPU, and several times less than sixteen in a row on a CPU.
- **Sampling.** temperature (0 is greedy), top_p, max_tokens, stop strings and a
  seed: each request draws from its own generator, so the same seed gives the same
  text (for the same batch composition; alone, always).
- **Isolation.** Batches mix requests of different buyers, so one request must never
  fail its neighbours. Everything a request brings (parameters, text, seed) is
  checked in the caller's thread before it joins a batch, and its generator is made
  there; inside a batch each request has its own error slot: an error while sampling
  or advancing one request ends that request alone (an ``InvalidInput`` is the
  caller's 400, anything else is ours), and a forward pass that fails for a batch is
  redone request by request from where each stood, so only the request that trips it
  again fails.
- **Structured output.** A request may carry a ``Constraint`` (a JSON schema): its
  tokens are masked per step to those the schema's grammar allows (runtime/structured.py,
  xgrammar), one bitmask row per constrained request; free requests in the same batch
  are untouched. The grammar is compiled in the caller's thread, so a schema that
  cannot be followed is that caller's 400 before the request joins a batch.
- **Embeddings.** ``embed`` mean-pools the last hidden states over each input's
  tokens and L2-normalizes them, in the caller's thread (one forward pass, no
  decoding, nothing shared with the batch but the weights).
- **Streaming.** ``stream`` yields text as it is decided: held back only while it
  could still turn into a stop string or ends inside a UTF-8 character, so the
  joined chunks equal the non-streamed text exactly.
- **Tokens.** A request may ask for the tokens it samples (``report_tokens``): each
  chunk then carries the tokens sampled since the last one, with their text, whether
  they are special and their log-probability under the distribution actually drawn
  from (``_sample`` says which).
- **Usage.** Prompt tokens are counted with the model's own tokenizer and chat
  template, exactly what the model reads; completion tokens are the tokens sampled.
  With a usage sink the engine records both per request (ids name the deployment
  and request, so a retried report is not counted twice), also when a stream is
  abandoned midway (what was generated is billed).

What a request carries and gets back (``SamplingParams``, ``Chunk``, ``Completion``,
``Embeddings``) is runtime/sampling.py, re-exported here; this module is the engine.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from core.errors import InvalidInput
from core.ports import SampledToken
from runtime.datasets import TextTokenizer, tokenizer_for
from runtime.registry import model_info
from runtime.sampling import (
    SEED_MAX,
    Chunk,
    Completion,
    Embeddings,
    SamplingParams,
    UsageSink,
    text_check,
    token_piece,
)
from runtime.structured import Constraint, Grammars, closing_reserve, inside_string

__all__ = [
    "SEED_MAX",
    "Chunk",
    "Completion",
    "Embeddings",
    "Engine",
    "SamplingParams",
    "UsageSink",
    "text_check",
]

logger = logging.getLogger(__name__)

STOP = object()


@dataclass(slots=True)
class _Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    out: queue.Queue = field(default_factory=queue.Queue)
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of ``text`` already sent
    finish: str | None = None
    cancelled: bool = False
    generator: torch.Generator | None = None
    budget: int = 0
    matcher: Any = None  # xgrammar's GrammarMatcher of a constrained request
    reserve: int = 0  # its last tokens, steered to close the document
    report_tokens: bool = False  # its chunks carry the tokens sampled
    logprob: float = 0.0  # of the token just sampled, when reported
    sampled: list[SampledToken] = field(default_factory=list)  # not yet in a chunk
    attributed: int = 0  # characters of the decoded text given to reported tokens


class Engine:
    """A loaded model serving requests until ``close``."""

    def __init__(
        self,
        *,
        model: str,
        adapter_path: str | None = None,
        deployment_id: str = "",
        usage: UsageSink | None = None,
        max_batch: int = 16,
        device: str | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.model_name = model
        self.deployment_id = deployment_id or f"dep-{uuid.uuid4().hex[:12]}"
        self.usage = usage
        self.max_batch = max_batch
        self.info = model_info(model)
        self.tokenizer: TextTokenizer = tokenizer_for(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        # Held as a plain module: transformers types PreTrainedModel.to through
        # functools.wraps, which loses the bound self, and .to/.eval/calls are all
        # the engine needs.
        loaded: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
            str(self.info.path), dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
        if adapter_path:
            from peft import PeftModel

            # Merged once at load: serving then costs what the base model costs.
            loaded = PeftModel.from_pretrained(loaded, adapter_path).merge_and_unload()
        self.model = loaded.to(self.device).eval()
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        config = getattr(self.model, "config", None)
        self.vocab_size = int(getattr(config, "vocab_size", 0) or self.tokenizer.vocab_size)
        self.hidden_size = int(getattr(config, "hidden_size", 0) or 0)
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()
        self.end_ids = set(self.tokenizer.end_ids)
        self._pending: queue.Queue[_Request | object] = queue.Queue()
        self._closed = False
        self.batch_sizes: list[int] = []  # requests decoded together, batch by batch
        self.on_batch = on_batch  # told each batch's size as it starts
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{self.deployment_id}", daemon=True
        )
        self._thread.start()

    # --- the caller's side -------------------------------------------------------

    def prompt_ids(
        self,
        *,
        prompt: str | None = None,
        messages: list[dict] | None = None,
        tools: list[dict] | None = None,
    ) -> list[int]:
        if (prompt is None) == (messages is None):
            raise InvalidInput("give either prompt or messages", details={"field": "prompt"})
        if messages is not None:
            if not isinstance(messages, list) or not messages:
                raise InvalidInput(
                    "messages: must be a non-empty list", details={"field": "messages"}
                )
            uses_tools = bool(tools)
            for index, message in enumerate(messages):
                if not isinstance(message, dict) or message.get("role") not in (
                    "system",
                    "user",
                    "assistant",
                    "tool",
                ):
                    raise InvalidInput(
                        f"messages[{index}]: needs a role (system, user, assistant, tool) "
                        "and content",
                        details={"field": f"messages[{index}]"},
                    )
                if message.get("tool_calls") or message["role"] == "tool":
                    uses_tools = True
                if message.get("content") is not None or not message.get("tool_calls"):
                    text_check(message.get("content"), field=f"messages[{index}].content")
            if uses_tools and not self.tokenizer.renders_tools:
                raise InvalidInput(
                    f"tools: {self.model_name}'s chat template does not render tools, "
                    "tool calls or tool results",
                    details={"field": "tools"},
                )
            return self.tokenizer.chat_prompt_ids(messages, tools=tools)
        if tools:
            raise InvalidInput(
                "tools: only a chat request can use tools", details={"field": "tools"}
            )
        return self.tokenizer.prompt_ids(text_check(prompt, field="prompt"))

    def grammars(self) -> Grammars:
        """The engine's grammar compiler, made on the first constrained request."""
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = Grammars(
                    tokenizer_path=str(self.info.path / "tokenizer.json"),
                    vocab_size=self.vocab_size,
                    end_ids=self.end_ids,
                )
            return self._grammars

    def embed(self, texts: list[str], *, field: str = "input") -> Embeddings:
        """One L2-normalized vector per text: the mean of the last hidden states over
        the text's tokens (the model's own tokenizer; BOS where the model wants it)."""
        if not isinstance(texts, list) or not texts:
            raise InvalidInput(f"{field}: must be a non-empty list", details={"field": field})
        ids = []
        for index, text in enumerate(texts):
            where = f"{field}[{index}]"
            row = self.tokenizer.prompt_ids(text_check(text, field=where))
            if not text or len(row) > self.info.context_length:
                raise InvalidInput(
                    f"{where}: must be 1 to {self.info.context_length} tokens "
                    f"(the model's context), not {len(row) if text else 0}",
                    details={"field": where},
                )
            ids.append(row)
        longest = max(len(row) for row in ids)
        batch = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = torch.tensor(row)  # right-padded: positions from 0
            mask[i, : len(row)] = 1
        batch, mask = batch.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            out = self.model(input_ids=batch, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[-1].float()
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return Embeddings(
            vectors=vectors.cpu().tolist(), prompt_tokens=sum(len(row) for row in ids)
        )

    def submit(
        self,
        *,
        prompt: str | None = None,
        messages: list[dict] | None = None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        constraint: Constraint | None = None,
        tools: list[dict] | None = None,
        report_tokens: bool = False,
    ) -> _Request:
        if self._closed:
            raise RuntimeError("the engine is closed")
        params = params or SamplingParams()
        params.check()
        ids = self.prompt_ids(prompt=prompt, messages=messages, tools=tools)
        room = self.info.context_length - len(ids)
        if room < 1:
            raise InvalidInput(
                f"prompt: {len(ids)} tokens leave no room in the model's "
                f"{self.info.context_length}-token context",
                details={"field": "prompt", "prompt_tokens": len(ids)},
            )
        budget = min(params.max_tokens, room)
        request = _Request(
            id=request_id or f"req-{uuid.uuid4().hex}",
            prompt_ids=ids,
            params=params,
            budget=budget,
            generator=self._generator(params),
            report_tokens=report_tokens,
        )
        if constraint is not None:
            # Compiled (or found in the cache) here: a bad schema is this caller's 400.
            request.matcher = self.grammars().matcher(constraint)
            request.reserve = closing_reserve(budget)
        self._pending.put(request)
        return request

    def _generator(self, params: SamplingParams) -> torch.Generator | None:
        """The request's own generator, made here (the caller's thread) so a seed the
        generator refuses is the caller's error, not the batch's."""
        if params.greedy:
            return None
        generator = torch.Generator(device=self.device)
        seed = params.seed
        generator.manual_seed(
            seed if seed is not None else int.from_bytes(uuid.uuid4().bytes[:8], "little") >> 1
        )
        return generator

    def stream(self, **kwargs: Any) -> Iterator[Chunk]:
        """Chunks of one completion as they are decided; the last carries the counts."""
        return self._consume(self.submit(**kwargs))

    def chunks(self, request: _Request) -> Iterator[Chunk]:
        """Chunks of a request ``submit`` accepted (``stream`` in two steps: a caller
        that must answer the submit's verdict before the first token)."""
        return self._consume(request)

    def complete(self, **kwargs: Any) -> Completion:
        request = self.submit(**kwargs)
        pieces = []
        last = Chunk("")
        for chunk in self._consume(request):
            pieces.append(chunk.text)
            last = chunk
        return Completion(
            request_id=request.id,
            text="".join(pieces),
            finish_reason=last.finish_reason or "stop",
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(request.generated),
            token_ids=list(request.generated),
        )

    def _consume(self, request: _Request) -> Iterator[Chunk]:
        finished = False
        try:
            while True:
                item = request.out.get()
                if item is STOP:
                    break
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
        finally:
            if not finished:
                request.cancelled = True  # the client went away: stop spending on it
            if self.usage is not None:
                self.usage(request.id, len(request.prompt_ids), len(request.generated))

    def close(self) -> None:
        self._closed = True
        self._pending.put(STOP)
        self._thread.join(timeout=30)

    # --- the scheduler thread -----------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is STOP:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is STOP:
                    self._pending.put(STOP)
                    break
                batch.append(item)
            requests = [r for r in batch if isinstance(r, _Request) and not r.cancelled]
            if not requests:
                continue
            self.batch_sizes.append(len(requests))
            if self.on_batch is not None:
                self.on_batch(len(requests))
            self._decode_isolated(requests)

    def _fail(self, request: _Request, error: BaseException) -> None:
        """End ``request`` alone with ``error``: its caller raises it."""
        if request.finish is not None:
            return
        if not isinstance(error, InvalidInput):
            logger.error(
                "inference request %s failed while decoding",
                request.id,
                exc_info=error,
                extra={"deployment": self.deployment_id},
            )
        request.finish = "error"
        request.out.put(error)
        request.out.put(STOP)

    def _decode_isolated(self, requests: list[_Request]) -> None:
        """Decode a batch; if the batch itself fails (a forward pass), decode each
        unfinished request alone from where it stood, so the error stays with the
        request that causes it. Nothing escapes: the engine serves on."""
        try:
            with torch.inference_mode():
                self._decode(requests)
            return
        except Exception as exc:
            live = [r for r in requests if r.finish is None]
            if len(requests) == 1:
                for request in live:
                    self._fail(request, exc)
                return
        for request in live:
            try:
                with torch.inference_mode():
                    self._decode([request])
            except Exception as alone:
                self._fail(request, alone)

    def _forward(
        self,
        requests: list[_Request],
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """One forward pass of the batch ``requests``: the last position's logits."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1, :].float()

    def _decode(self, requests: list[_Request]) -> None:
        """Decode ``requests`` together until each finishes. Each one's sampling and
        advancing is its own error slot (``_fail``). A request decoded again after its
        batch failed resumes from its prompt plus the tokens it already has."""
        from transformers import DynamicCache

        contexts = [r.prompt_ids + r.generated for r in requests]
        longest = max(len(c) for c in contexts)
        size = len(requests)
        ids = torch.full((size, longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((size, longest), dtype=torch.long)
        for i, context in enumerate(contexts):
            n = len(context)
            ids[i, longest - n :] = torch.tensor(context)
            mask[i, longest - n :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(
            requests, input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache
        )
        next_positions = positions[:, -1:] + 1
        active = [i for i, r in enumerate(requests) if r.finish is None]
        constrained = any(r.matcher is not None for r in requests)
        bitmask = self.grammars().bitmask(size) if constrained else None
        while active:
            chosen = torch.full((size, 1), self.pad_id, dtype=torch.long, device=self.device)
            if bitmask is not None:
                self._constrain(requests, active, logits, bitmask)
            for i in list(active):
                request = requests[i]
                if request.cancelled:
                    request.finish = "cancelled"
                    request.out.put(STOP)
                    active.remove(i)
                    continue
                try:
                    token = self._sample(logits[i], request)
                    self._advance(request, token)
                except Exception as exc:  # this request's error, not its neighbours'
                    self._fail(request, exc)
                    active.remove(i)
                    continue
                chosen[i, 0] = token
                if request.finish is not None:
                    active.remove(i)
            if not active:
                break
            mask = torch.cat([mask, torch.ones((size, 1), dtype=mask.dtype, device=self.device)], 1)
            logits = self._forward(
                requests,
                input_ids=chosen,
                attention_mask=mask,
                position_ids=next_positions,
                cache=cache,
            )
            next_positions = next_positions + 1

    def _constrain(
        self,
        requests: list[_Request],
        active: list[int],
        logits: torch.Tensor,
        bitmask: torch.Tensor,
    ) -> None:
        """Mask each active constrained request's row of ``logits`` to the tokens its
        grammar allows (one bitmask fill per request, one masking call for all rows);
        a request whose matcher fails ends alone."""
        rows = []
        for i in list(active):
            request = requests[i]
            if request.matcher is None or request.cancelled:
                continue
            try:
                request.matcher.fill_next_token_bitmask(bitmask, i)
            except Exception as exc:
                self._fail(request, exc)
                active.remove(i)
                continue
            rows.append(i)
        if rows:
            self.grammars().apply(logits, bitmask, rows)

    def _sample(self, logits: torch.Tensor, request: _Request) -> int:
        """The next token of ``request`` from its row of ``logits`` (already masked to
        -inf outside its grammar, for a constrained request). Drawn from
        softmax(logits / temperature) over the allowed tokens, cut to the smallest
        set of most likely tokens whose mass reaches top_p and renormalized over it.
        For a request that reports its tokens, ``request.logprob`` is the natural log
        of the drawn token's probability under exactly that distribution; a token
        picked deterministically (temperature 0, or steered to close a document in
        the closing reserve) was picked with probability 1: log-probability 0."""
        params = request.params
        request.logprob = 0.0
        if request.matcher is not None and request.budget - len(request.generated) <= (
            request.reserve
        ):
            steered = self.grammars().steer(
                logits, request.matcher, in_string=inside_string(request.text)
            )
            if steered is not None:
                return steered
        if params.greedy or request.generator is None:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        token = int(torch.multinomial(probs, 1, generator=request.generator).item())
        if request.report_tokens:
            # multinomial renormalizes the kept mass; so does the reported figure.
            picked = float(torch.log(probs[token]) - torch.log(probs.sum()))
            request.logprob = min(picked, 0.0)  # a lone kept token: 0, not a rounding above
        return token

    def _advance(self, request: _Request, token: int) -> None:
        if request.matcher is not None and not request.matcher.accept_token(token):
            raise RuntimeError(f"token {token} was sampled outside the request's grammar")
        request.generated.append(token)
        finish = None
        special = token in self.end_ids
        if special:
            # The end marker was generated and counts, but is not part of the text.
            text = self.tokenizer.decode(request.generated[:-1])
            finish = "stop"
        else:
            text = self.tokenizer.decode(request.generated)
        if request.report_tokens:
            if special:
                piece = self.tokenizer.tokenizer.id_to_token(token) or ""
            else:
                piece, request.attributed = token_piece(text, request.attributed)
            request.sampled.append(SampledToken(token, piece, request.logprob, special))
        cut = None
        for stop in request.params.stop:
            at = text.find(stop)
            if at != -1 and (cut is None or at < cut):
                cut = at
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif finish is None and len(request.generated) >= request.budget:
            finish = "length"
        request.text = text
        if finish is None:
            # Hold back what could still become a stop string or a split character.
            hold = max((len(s) - 1 for s in request.params.stop), default=0)
            safe = len(text) - hold
            while safe > request.emitted and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > request.emitted:
                request.out.put(Chunk(text[request.emitted : safe], tokens=self._taken(request)))
                request.emitted = safe
            return
        request.finish = finish
        request.out.put(
            Chunk(
                text[request.emitted :],
                finish_reason=finish,
                prompt_tokens=len(request.prompt_ids),
                completion_tokens=len(request.generated),
                tokens=self._taken(request),
            )
        )
        request.emitted = len(text)
        request.out.put(STOP)

    @staticmethod
    def _taken(request: _Request) -> tuple[SampledToken, ...]:
        """The reported tokens not yet in a chunk, for the chunk going out now."""
        taken = tuple(request.sampled)
        request.sampled.clear()
        return taken
