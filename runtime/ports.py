"""The runtime's side of the workloads ports (core/ports.py): dataset checks, the
model registry and token counts, for the /v1/ API, which may not import the runtime.
Registered in ``RuntimeConfig.ready()``; nothing here imports torch.

No engine runs in a control-plane process: a deployment's engine runs on its leased
node (runtime/serve.py, started by the node's agent), and the gateway relays
requests to it and counts the tokens it bills with ``RuntimeTokens``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from core.ports import (
    DatasetCheck,
    ModelCard,
)
from runtime.datasets import DatasetInvalid, dataset_load, tokenizer_for
from runtime.registry import models_list

if TYPE_CHECKING:
    pass

# Purposes whose files are training data; the rest (batch inputs, results) are
# stored as they come.
CHECKED_PURPOSES = frozenset({"fine-tune", "eval"})


class RuntimeDatasets:
    def check(self, *, path: str, purpose: str) -> DatasetCheck:
        if purpose not in CHECKED_PURPOSES:
            return DatasetCheck(valid=True)
        try:
            report, _ = dataset_load(path, model=None)
        except DatasetInvalid as exc:
            return DatasetCheck(valid=False, error=exc.message)
        return DatasetCheck(valid=True, format=report.format, examples=report.examples)

    def count_tokens(self, *, path: str, model: str) -> int:
        report, _ = dataset_load(path, model=model)
        return report.tokens


class RuntimeModels:
    def base_models(self) -> list[ModelCard]:
        return [
            ModelCard(
                name=info.name,
                parameter_count=info.parameters,
                context_length=info.context_length,
                supports_full_training=True,
                # bf16 weights plus a fifth for the KV cache and activations.
                serving_memory_gib=max(1, math.ceil(info.parameters * 2 * 1.2 / 1024**3)),
            )
            for info in models_list()
        ]


class RuntimeTokens:
    """Token counts with a model's own tokenizer and chat template, for the inference
    gateway, which bills what it counts itself, never a number the node reports. The
    prompt is counted exactly as the engine reads it (runtime/inference.py
    ``Engine.prompt_ids``); a completion by tokenizing the text the gateway received."""

    def prompt_tokens(
        self,
        *,
        model: str,
        prompt: str | None,
        messages: list[dict] | None,
        tools: list[dict] | None,
    ) -> int:
        tokenizer = tokenizer_for(model)
        if messages is not None:
            return len(tokenizer.chat_prompt_ids(messages, tools=tools))
        return len(tokenizer.prompt_ids(prompt or ""))

    def text_tokens(self, *, model: str, text: str) -> int:
        return len(tokenizer_for(model).encode(text)) if text else 0

    def embedding_tokens(self, *, model: str, texts: list[str]) -> int:
        tokenizer = tokenizer_for(model)
        return sum(len(tokenizer.prompt_ids(text)) for text in texts)
