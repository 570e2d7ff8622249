"""The typed port through which the inference gateway counts the tokens it bills
(consumer: marketplace/workloads/gateway.py; provider: the runtime's
``RuntimeTokens``, registered in ``RuntimeConfig.ready()``). A port like those in
core/ports.py, keyed by this Protocol: the gateway may not import the runtime, and
it never trusts a count the node reports.

The prompt is counted exactly as the engine reads it (the model's tokenizer and chat
template, tools rendered); a completion by tokenizing the text the client received.
"""

from __future__ import annotations

from typing import Protocol


class TokensPort(Protocol):
    def prompt_tokens(
        self,
        *,
        model: str,
        prompt: str | None,
        messages: list[dict] | None,
        tools: list[dict] | None,
    ) -> int: ...

    def text_tokens(self, *, model: str, text: str) -> int: ...

    def embedding_tokens(self, *, model: str, texts: list[str]) -> int: ...
