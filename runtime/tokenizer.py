"""A model's tokenizer as the runtime uses it (no torch: the ``tokenizers`` library
and a jinja template): ids for text, special tokens, and its chat template split
into what is read and what is trained."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from runtime.examples import IGNORE, DatasetInvalid, Example
from runtime.registry import model_info


class TextTokenizer:
    """A model's tokenizer as the runtime uses it: ids for text, special tokens,
    and its chat template split into what is read and what is trained."""

    def __init__(self, path: Path) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.pad_token = _token_text(config.get("pad_token")) or self.eos_token
        self.bos_id = self._id(self.bos_token)
        self.eos_id = self._id(self.eos_token)
        self.pad_id = self._id(self.pad_token)
        self.add_bos = bool(config.get("add_bos_token", True)) and self.bos_id is not None
        template = config.get("chat_template")
        jinja_file = path / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text()
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.chat_template = env.from_string(template) if isinstance(template, str) else None
        # Whether the template renders tool definitions, calls and results (the
        # Hugging Face convention: a ``tools`` variable, ``message.tool_calls``, the
        # ``tool`` role); a chat request that uses tools on one that does not is refused.
        self.renders_tools = isinstance(template, str) and "tool" in template
        self.vocab_size = self.tokenizer.get_vocab_size()
        # Template text already carries the special tokens it wants.
        self.end_ids = {
            i
            for i in (
                self.eos_id,
                self._id("<|end|>"),
                self._id("<|eot_id|>"),
                self._id("<|im_end|>"),
            )
            if i is not None
        }

    def _id(self, token: str | None) -> int | None:
        return self.tokenizer.token_to_id(token) if token else None

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as is: no special tokens added (those in the text count)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        if self.chat_template is None:
            raise DatasetInvalid(
                "this model has no chat template; use the text or prompt/completion format",
                details={"field": "messages"},
            )
        return self.chat_template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            tools=tools or None,
        )

    def prompt_ids(self, prompt: str) -> list[int]:
        """A completion prompt as the model reads it (BOS first where the model wants it)."""
        ids = self.encode(prompt)
        return [self.bos_id, *ids] if self.add_bos and self.bos_id is not None else ids

    def chat_prompt_ids(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt=True, tools=tools))

    def example_text(self, text: str) -> Example:
        ids = self.prompt_ids(text) + ([self.eos_id] if self.eos_id is not None else [])
        return Example(ids, list(ids))

    def example_prompt_completion(
        self, prompt: str, completion: str, *, train_on_inputs: bool
    ) -> Example:
        head = self.prompt_ids(prompt)
        tail = self.encode(completion) + ([self.eos_id] if self.eos_id is not None else [])
        labels = (list(head) if train_on_inputs else [IGNORE] * len(head)) + list(tail)
        return Example(head + tail, labels)

    def example_messages(self, messages: list[dict[str, Any]], *, train_on_inputs: bool) -> Example:
        """Render turn by turn: the text each turn adds to the rendered conversation is
        tokenized on its own, so the loss mask falls exactly on turn boundaries; an
        assistant turn is split after its generation prompt (the role header)."""
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                header = self.render_chat(turns[:index], add_generation_prompt=True)
                piece = header[len(done) :]
                piece_ids = self.encode(piece)
                ids += piece_ids
                labels += piece_ids if train_on_inputs else [IGNORE] * len(piece_ids)
                done = header
                full = self.render_chat(turns[: index + 1], add_generation_prompt=False)
                piece_ids = self.encode(full[len(done) :])
                trained = train_on_inputs or message.get("weight", 1) == 1
                ids += piece_ids
                labels += piece_ids if trained else [IGNORE] * len(piece_ids)
            else:
                full = self.render_chat(turns[: index + 1], add_generation_prompt=False)
                piece_ids = self.encode(full[len(done) :])
                ids += piece_ids
                labels += piece_ids if train_on_inputs else [IGNORE] * len(piece_ids)
            done = full
        return Example(ids, labels)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


@lru_cache(maxsize=8)
def _tokenizer_at(path: str, mtime: float) -> TextTokenizer:
    return TextTokenizer(Path(path))


def tokenizer_for(model: str) -> TextTokenizer:
    path = model_info(model).path
    return _tokenizer_at(str(path), (path / "tokenizer.json").stat().st_mtime)
