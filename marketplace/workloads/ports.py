"""Every call this app makes into its neighbours, in one place.

- the runtime: dataset checks and token counts, the model registry (typed ports:
  ``DatasetsPort``, ``ModelRegistryPort``, and core.tokens' ``TokensPort`` for the
  inference gateway's counts);
- training and inference on the leased node: the assignments
  (marketplace.assignments.training, marketplace.assignments.serving);
- pricing and the ledger (apps below this one, imported directly): the price book's
  fine-tune estimate and the buyer's available credit.

Keeping them here means the services read in the domain's words, and a change in a
neighbour's interface is a change to one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import ports
from core.ports import (
    DatasetCheck,
    GenerationRequest,
    ModelCard,
    UsageRecord,
)
from core.tokens import TokensPort
from ledger.selectors import available_credit
from marketplace.assignments import serving, training
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


# Token counts with the model's own tokenizer: the gateway bills what it counts.


def prompt_tokens(*, model: str, request: GenerationRequest) -> int:
    return int(
        ports.get(TokensPort).prompt_tokens(
            model=model, prompt=request.prompt, messages=request.messages, tools=request.tools
        )
    )


def text_tokens(*, model: str, text: str) -> int:
    return int(ports.get(TokensPort).text_tokens(model=model, text=text))


def embedding_tokens(*, model: str, texts: list[str]) -> int:
    return int(ports.get(TokensPort).embedding_tokens(model=model, texts=texts))


# Inference runs on the leased node too: an assignment of kind ``serve`` whose agent
# starts the engine and takes the deployment's requests through the relay
# (marketplace/assignments/serving.py, marketplace/workloads/relay.py).


def serving_assign(*, lease_id: int, deployment_id: str, spec: dict[str, Any]) -> None:
    """Queue the deployment's engine for its lease's node (in the caller's transaction)."""
    serving.serve_assign(lease_id=lease_id, deployment_id=deployment_id, spec=spec)


def serving_state(*, deployment_id: str) -> Any:
    """The deployment's serve assignment (``serving.ServeState``), or None."""
    return serving.serve_state(deployment_id=deployment_id)


def serving_current(*, node_id: int, assignment_id: int, attempt: int) -> str:
    """The deployment a node's current serve claim serves (404: not the node's serve
    assignment; 409: a stale attempt)."""
    found = serving.serve_assignment_current(
        node_id=node_id, assignment_id=assignment_id, attempt=attempt
    )
    return found.workload_id


# Training runs on the leased node: an assignment of kind ``train`` that the node's
# agent claims and runs (marketplace/assignments/training.py); no control-plane
# process trains.


def training_assign(
    *,
    lease_id: int,
    job_id: str,
    work: dict[str, Any],
    files: dict[str, str | None],
    init_from: dict[str, Any] | None = None,
) -> None:
    """Queue the job's training for its lease's node (in the caller's transaction);
    ``init_from``: the other job's checkpoint its weights start from ({job_id, step})."""
    training.train_assign(
        lease_id=lease_id, job_id=job_id, work=work, files=files, init_from=init_from
    )


def training_cancel(*, job_id: str) -> None:
    """Stop the job's training on its node (the last checkpoint stays)."""
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
