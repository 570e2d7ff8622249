"""The runtime's side of the workloads ports (core/ports.py): dataset checks, the
model registry and inference engines, for the /v1/ API, which may not import the
runtime. Registered in ``RuntimeConfig.ready()``; nothing here imports torch until
an engine is loaded.

The inference port records no usage itself: the API records each request's exact
counts from the last chunk, under its own request ids.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from core.errors import NotFound
from core.ports import (
    DatasetCheck,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
)
from runtime.datasets import DatasetInvalid, dataset_load
from runtime.registry import models_list

if TYPE_CHECKING:
    from runtime.inference import Engine

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


class RuntimeInference:
    """Engines of this process, one per deployment."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def load(self, *, deployment_id: str, base_model: str, adapter_path: str | None) -> None:
        from runtime.inference import Engine

        with self._lock:
            if deployment_id in self._engines:
                return
            self._engines[deployment_id] = Engine(
                model=base_model, adapter_path=adapter_path, deployment_id=deployment_id
            )

    def generate(
        self, *, deployment_id: str, request: GenerationRequest
    ) -> Iterator[GenerationChunk]:
        from runtime.inference import SamplingParams
        from runtime.structured import Constraint

        engine = self._engine(deployment_id)
        constraint = (
            Constraint(
                schema=request.json_schema,
                field=request.json_schema_field,
                strict=request.json_schema_strict,
            )
            if request.json_schema is not None
            else None
        )
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stop),
            seed=request.seed,
        )
        stream = engine.stream(
            prompt=request.prompt,
            messages=request.messages,
            params=params,
            constraint=constraint,
            tools=request.tools,
        )
        return (
            GenerationChunk(
                text=chunk.text,
                finish_reason=chunk.finish_reason,
                prompt_tokens=chunk.prompt_tokens,
                completion_tokens=chunk.completion_tokens,
            )
            for chunk in stream
        )

    def embed(self, *, deployment_id: str, texts: list[str]) -> EmbeddingResult:
        result = self._engine(deployment_id).embed(texts)
        return EmbeddingResult(vectors=result.vectors, prompt_tokens=result.prompt_tokens)

    def _engine(self, deployment_id: str) -> Engine:
        engine = self._engines.get(deployment_id)
        if engine is None:
            raise NotFound(f"deployment {deployment_id} is not loaded on this node")
        return engine

    def unload(self, *, deployment_id: str) -> None:
        with self._lock:
            engine = self._engines.pop(deployment_id, None)
        if engine is not None:
            engine.close()
