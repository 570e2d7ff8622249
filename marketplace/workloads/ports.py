"""Every call this app makes into apps it may not import, in one place.

- the runtime: dataset checks and token counts, the model registry, inference
  engines (core.ports ``datasets``, ``models``, ``inference``), and training through
  its dramatiq actors, sent by name;
- billing: the price book's fine-tune estimate (port ``pricebook``) and the buyer's
  available credit (port ``credit``).

Keeping them here means the services read in the domain's words, and a change in a
neighbour's interface is a change to one module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq

from core import ports
from core.ports import DatasetCheck, GenerationChunk, GenerationRequest, ModelCard

# --- runtime ----------------------------------------------------------------


def dataset_check(*, path: str, purpose: str) -> DatasetCheck:
    return ports.get("datasets").check(path=path, purpose=purpose)


def dataset_tokens(*, path: str, model: str) -> int:
    return int(ports.get("datasets").count_tokens(path=path, model=model))


def base_models() -> list[ModelCard]:
    return list(ports.get("models").base_models())


def base_model(name: str) -> ModelCard | None:
    return next((card for card in base_models() if card.name == name), None)


def engine_load(*, deployment_id: str, base_model: str, adapter_path: str | None) -> None:
    ports.get("inference").load(
        deployment_id=deployment_id, base_model=base_model, adapter_path=adapter_path
    )


def engine_generate(*, deployment_id: str, request: GenerationRequest) -> Iterator[GenerationChunk]:
    return ports.get("inference").generate(deployment_id=deployment_id, request=request)


def engine_unload(*, deployment_id: str) -> None:
    ports.get("inference").unload(deployment_id=deployment_id)


# The runtime's actors, by name (runtime/tasks.py): the work spec travels as JSON.
TRAIN_ACTOR = "finetune_run"
CANCEL_ACTOR = "finetune_cancel"


def training_send(*, spec: dict[str, Any]) -> None:
    dramatiq.get_broker().get_actor(TRAIN_ACTOR).send(spec)


def training_cancel_send(*, job_id: str) -> None:
    dramatiq.get_broker().get_actor(CANCEL_ACTOR).send(job_id)


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
    parameter_count: int,
    training_type: str,
    method: str,
    training_tokens: int,
    validation_tokens: int,
    n_epochs: int,
    n_evals: int,
    currency: str,
) -> Estimate:
    """The price book's figure: ``(training tokens x epochs + validation tokens x
    evaluations) x rate``, with its per-job minimum."""
    result = ports.get("pricebook").finetune_estimate(
        organization_id=organization_id,
        model=model,
        parameter_count=parameter_count,
        training_type=training_type,
        method=method,
        training_tokens=training_tokens,
        validation_tokens=validation_tokens,
        n_epochs=n_epochs,
        n_evals=n_evals,
        currency=currency,
    )
    return Estimate(
        total_micros=int(result.amount_micros),
        currency=currency,
        training_tokens=training_tokens * n_epochs,
        evaluation_tokens=validation_tokens * n_evals,
    )


def credit_available(*, organization_id: int, currency: str) -> int:
    return int(ports.get("credit").available(organization_id=organization_id, currency=currency))
