"""Every call this app makes into its neighbours, in one place.

- the runtime: dataset checks and token counts, the model registry, inference
  engines (typed ports: ``DatasetsPort``, ``ModelRegistryPort``, ``InferencePort``);
- training on the leased node: the assignments (marketplace.assignments.training);
- pricing and the ledger (apps below this one, imported directly): the price book's
  fine-tune estimate and the buyer's available credit.

Keeping them here means the services read in the domain's words, and a change in a
neighbour's interface is a change to one module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core import ports
from core.ports import (
    DatasetCheck,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
    UsageRecord,
)
from ledger.selectors import available_credit
from pricing.selectors import fine_tune_quote

# --- runtime ----------------------------------------------------------------


def dataset_check(*, path: str, purpose: str) -> DatasetCheck:
    return ports.get(ports.DatasetsPort).check(path=path, purpose=purpose)


def dataset_tokens(*, path: str, model: str) -> int:
    return int(ports.get(ports.DatasetsPort).count_tokens(path=path, model=model))


def base_models() -> list[ModelCard]:
    return list(ports.get(ports.ModelRegistryPort).base_models())


def base_model(name: str) -> ModelCard | None:
    return next((card for card in base_models() if card.name == name), None)


def engine_load(*, deployment_id: str, base_model: str, adapter_path: str | None) -> None:
    ports.get(ports.InferencePort).load(
        deployment_id=deployment_id, base_model=base_model, adapter_path=adapter_path
    )


def engine_generate(*, deployment_id: str, request: GenerationRequest) -> Iterator[GenerationChunk]:
    return ports.get(ports.InferencePort).generate(deployment_id=deployment_id, request=request)


def engine_embed(*, deployment_id: str, texts: list[str]) -> EmbeddingResult:
    return ports.get(ports.InferencePort).embed(deployment_id=deployment_id, texts=texts)


def engine_unload(*, deployment_id: str) -> None:
    ports.get(ports.InferencePort).unload(deployment_id=deployment_id)


# Training runs on the leased node: an assignment of kind ``train`` that the node's
# agent claims and runs (marketplace/assignments/training.py); no control-plane
# process trains.


def training_assign(
    *, lease_id: int, job_id: str, work: dict[str, Any], files: dict[str, str | None]
) -> None:
    """Queue the job's training for its lease's node (in the caller's transaction)."""
    from marketplace.assignments import training

    training.train_assign(lease_id=lease_id, job_id=job_id, work=work, files=files)


def training_cancel(*, job_id: str) -> None:
    """Stop the job's training on its node (the last checkpoint stays)."""
    from marketplace.assignments import training

    training.train_cancel(job_id=job_id)


# --- billing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    total_micros: int
    currency: str
    training_tokens: int
    evaluation_tokens: int


def finetune_estimate(
    *,
    organization_id: int,
    model: str,
    training_type: str,
    method: str,
    training_tokens: int,
    validation_tokens: int,
    n_epochs: int,
    n_evals: int,
) -> Estimate:
    """The price book's figure: ``(training tokens x epochs + validation tokens x
    evaluations) x rate``, with its per-job minimum."""
    quote = fine_tune_quote(
        organization_id=organization_id,
        model=model,
        training_type=f"{training_type}-{method}",  # the price book's lora-sft, full-dpo...
        training_tokens=training_tokens,
        epochs=n_epochs,
        validation_tokens=validation_tokens,
        evaluations=n_evals,
    )
    return Estimate(
        total_micros=int(quote.amount_micros),
        currency=str(quote.currency),
        training_tokens=training_tokens * n_epochs,
        evaluation_tokens=validation_tokens * n_evals,
    )


def usage_record(records: list[UsageRecord]) -> list[str]:
    """Metering's ingestion (port ``usage``): one status per record."""
    return list(ports.get(ports.UsagePort).record(records))


def credit_available(*, organization_id: int, currency: str) -> int:
    return available_credit(organization_id=organization_id, currency=currency)
