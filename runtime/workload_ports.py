"""The runtime's side of the ports the workloads API calls (core.ports, section
"workloads"): dataset checks and token counts, and the model registry.

``register()`` puts them in core.ports; the runtime's AppConfig.ready() calls it.
"""

from __future__ import annotations

from core import ports
from core.ports import DatasetCheck, ModelCard
from runtime.datasets import DatasetInvalid, dataset_validate
from runtime.registry import models_list


class RuntimeDatasets:
    def check(self, *, path: str, purpose: str) -> DatasetCheck:
        try:
            report = dataset_validate(path)
        except DatasetInvalid as error:
            return DatasetCheck(valid=False, error=error.message)
        return DatasetCheck(valid=True, format=report.format, examples=report.examples)

    def count_tokens(self, *, path: str, model: str) -> int:
        return dataset_validate(path, model=model).tokens


class RuntimeModels:
    def base_models(self) -> list[ModelCard]:
        return [
            ModelCard(
                name=info.name,
                parameter_count=info.parameters,
                context_length=info.context_length,
                # bf16 weights plus a quarter for the KV cache and activations.
                serving_memory_gib=max(1, round(info.parameters * 2 * 1.25 / 2**30)),
            )
            for info in models_list()
        ]


def register() -> None:
    if not ports.registered("datasets"):
        ports.register("datasets", RuntimeDatasets())
    if not ports.registered("models"):
        ports.register("models", RuntimeModels())
