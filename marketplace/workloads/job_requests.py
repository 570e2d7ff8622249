"""A fine-tune job's request before it exists: its fields, the checks of each against
the base model and the datasets (limits, hyperparameters with their defaults), and
its quote from the price book's rates."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, TypedDict

from core.models import Organization
from core.ports import ModelCard
from marketplace.workloads import ports as external
from marketplace.workloads.checkpoints import CheckpointSource, checkpoint_source, inherited
from marketplace.workloads.errors import invalid, not_found
from marketplace.workloads.files import file_check, file_tokens
from marketplace.workloads.models import (
    File,
)

SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A fine-tune job as either API shape asked for it, in one vocabulary."""

    model: str
    training_file: str
    validation_file: str | None = None
    method: str = "sft"
    training_type: str = "lora"
    # Values may be "auto" (OpenAI) or absent; resolved by job_hyperparameters().
    n_epochs: int | str | None = None
    batch_size: int | str | None = None
    learning_rate: float | None = None
    learning_rate_multiplier: float | str | None = None
    lr_scheduler: str = "cosine"
    min_lr_ratio: float = 0.0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    n_checkpoints: int = 1
    n_evals: int = 0
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_trainable_modules: str = "all-linear"
    train_on_inputs: bool | str = "auto"
    dpo_beta: float | None = None
    suffix: str = ""
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    requested: dict[str, Any] = field(default_factory=dict)
    # Another job's checkpoint to start from (checkpoints.py); then an empty model or
    # training_type, and absent LoRA shape, are the source's.
    from_checkpoint: str = ""


@dataclass(frozen=True, slots=True)
class Quote:
    """What a job would cost, and whether the buyer's credit covers it."""

    model: ModelCard
    training_file: File
    validation_file: File | None
    hyperparameters: dict[str, Any]
    training_tokens: int
    validation_tokens: int
    total_micros: int
    currency: str
    available_micros: int
    source: CheckpointSource | None = None

    @property
    def allowed(self) -> bool:
        return self.available_micros >= self.total_micros


def _base_model(name: str) -> ModelCard:
    if not name:
        raise invalid("model is required", param="model", code="missing_model")
    card = external.base_model(name)
    if card is None:
        raise not_found("model", name, param="model")
    return card


def _dataset(organization: Organization, file_id: str | None, *, param: str) -> File | None:
    if not file_id:
        return None
    file = File.objects.filter(
        organization=organization, public_id=file_id, deleted_at=None
    ).first()
    if file is None:
        raise not_found("file", file_id, param=param)
    if file.status == File.Status.UPLOADED:
        file = file_check(file=file)  # a worker has not got to it yet: check it now
    if file.status == File.Status.AWAITING_BYTES:
        raise invalid(f"{file_id} has no content yet", param=param, code="file_not_uploaded")
    if file.status == File.Status.ERROR:
        raise invalid(
            f"{file_id} ({file.filename}) is not a valid dataset: {file.error_message}",
            param=param,
            code=f"invalid_{param}",
        )
    if file.purpose != "fine-tune":
        raise invalid(
            f"{file_id} was uploaded with purpose {file.purpose!r}, not 'fine-tune'", param=param
        )
    return file


def _positive_int(value: Any, *, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{param} must be a whole number from {low} to {high}", param=param)
    return value


def _number(value: Any, *, param: str, low: float, high: float, open_low: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and math.isnan(value))
    ):
        raise invalid(f"{param} must be a number", param=param)
    if value > high or value < low or (open_low and value == low):
        bound = f"greater than {low}" if open_low else f"at least {low}"
        raise invalid(f"{param} must be {bound} and at most {high}", param=param)
    return float(value)


class JobLimits(TypedDict):
    """The bounds a fine-tune's hyperparameters are checked against: whole numbers,
    and the learning rate's range."""

    max_epochs: int
    max_batch_size: int
    max_checkpoints: int
    max_evals: int
    max_lora_rank: int
    min_learning_rate: float
    max_learning_rate: float


LIMITS: JobLimits = {
    "max_epochs": 20,
    "max_batch_size": 64,
    "max_checkpoints": 20,
    "max_evals": 100,
    "max_lora_rank": 64,
    "min_learning_rate": 1e-7,
    "max_learning_rate": 1.0,
}
BASE_LEARNING_RATE = {"lora": 1e-4, "full": 1e-5}


def job_hyperparameters(request: JobRequest, *, examples: int, card: ModelCard) -> dict[str, Any]:
    """Every value the trainer needs, with "auto" resolved the way OpenAI documents
    it: epochs and batch size from the dataset's size, the learning rate as a
    multiple of the training type's base rate."""
    if request.method != "sft":
        # The runtime trains supervised only (see shapes.DPO_NOT_YET).
        raise invalid("method must be supervised (sft)", param="method")
    if request.training_type not in ("lora", "full"):
        raise invalid("training_type must be Lora or Full", param="training_type")
    if request.training_type == "full" and not card.supports_full_training:
        raise invalid(f"{card.name} can only be fine-tuned with LoRA", param="training_type")
    if request.n_epochs in (None, "auto"):
        # Small datasets need more passes; OpenAI's auto lands on 3 for most.
        n_epochs = 3 if examples < 1000 else 1
    else:
        n_epochs = _positive_int(
            request.n_epochs, param="n_epochs", low=1, high=LIMITS["max_epochs"]
        )
    if request.batch_size in (None, "auto", "max"):
        batch_size = max(1, min(8, examples // 8 or 1))
    else:
        batch_size = _positive_int(
            request.batch_size, param="batch_size", low=1, high=LIMITS["max_batch_size"]
        )
    base_rate = BASE_LEARNING_RATE[request.training_type]
    if request.learning_rate is not None:
        learning_rate = _number(
            request.learning_rate,
            param="learning_rate",
            low=LIMITS["min_learning_rate"],
            high=LIMITS["max_learning_rate"],
        )
    elif request.learning_rate_multiplier not in (None, "auto"):
        multiplier = _number(
            request.learning_rate_multiplier,
            param="learning_rate_multiplier",
            low=0.0,
            high=10.0,
            open_low=True,
        )
        learning_rate = base_rate * multiplier
    else:
        learning_rate = base_rate
    if request.lr_scheduler not in ("linear", "cosine"):
        raise invalid("lr_scheduler must be linear or cosine", param="lr_scheduler")
    params: dict[str, Any] = {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_scheduler": request.lr_scheduler,
        "min_lr_ratio": _number(request.min_lr_ratio, param="min_lr_ratio", low=0.0, high=1.0),
        "warmup_ratio": _number(request.warmup_ratio, param="warmup_ratio", low=0.0, high=1.0),
        "weight_decay": _number(request.weight_decay, param="weight_decay", low=0.0, high=1.0),
        "max_grad_norm": _number(request.max_grad_norm, param="max_grad_norm", low=0.0, high=1e3),
        "n_checkpoints": _positive_int(
            request.n_checkpoints, param="n_checkpoints", low=1, high=LIMITS["max_checkpoints"]
        ),
        "n_evals": _positive_int(request.n_evals, param="n_evals", low=0, high=LIMITS["max_evals"]),
        "train_on_inputs": request.train_on_inputs,
    }
    if request.train_on_inputs not in (True, False, "auto"):
        raise invalid("train_on_inputs must be true, false or auto", param="train_on_inputs")
    if request.training_type == "lora":
        rank = request.lora_r if request.lora_r is not None else 8
        params["lora_r"] = _positive_int(rank, param="lora_r", low=1, high=LIMITS["max_lora_rank"])
        alpha = request.lora_alpha if request.lora_alpha is not None else 2 * params["lora_r"]
        params["lora_alpha"] = _number(
            alpha, param="lora_alpha", low=0.0, high=1024.0, open_low=True
        )
        params["lora_dropout"] = _number(
            request.lora_dropout, param="lora_dropout", low=0.0, high=0.99
        )
        modules = request.lora_trainable_modules or "all-linear"
        modules = modules.strip() if isinstance(modules, str) else ""
        if not re.fullmatch(r"[A-Za-z0-9_.,-]+", modules):
            raise invalid(
                "lora_trainable_modules must be all-linear or comma-separated module names",
                param="lora_trainable_modules",
            )
        params["lora_trainable_modules"] = modules
    return params


def finetune_quote(*, organization: Organization, request: JobRequest) -> Quote:
    """Price a job the way creating it would: the same token counts, the same price
    book function, the same credit check."""
    if request.seed is not None:
        _positive_int(request.seed, param="seed", low=0, high=2**31 - 1)
    source = None
    if request.from_checkpoint:
        source = checkpoint_source(organization=organization, value=request.from_checkpoint)
        fixed = inherited(
            source,
            model=request.model,
            training_type=request.training_type,
            lora_r=request.lora_r,
            lora_alpha=request.lora_alpha,
            lora_trainable_modules=request.lora_trainable_modules,
        )
        request = dataclasses.replace(request, **fixed)
    card = _base_model(request.model)
    training = _dataset(organization, request.training_file, param="training_file")
    assert training is not None  # required: _dataset raises on an unknown id
    validation = _dataset(organization, request.validation_file, param="validation_file")
    hyperparameters = job_hyperparameters(request, examples=training.examples or 0, card=card)
    if hyperparameters["n_evals"] and validation is None:
        raise invalid("n_evals needs a validation_file", param="n_evals")
    training_tokens = file_tokens(file=training, model=card.name)
    validation_tokens = file_tokens(file=validation, model=card.name) if validation else 0
    estimate = external.finetune_estimate(
        organization_id=organization.pk,
        model=card.name,
        training_type=request.training_type,
        method=request.method,
        training_tokens=training_tokens,
        validation_tokens=validation_tokens,
        n_epochs=hyperparameters["n_epochs"],
        n_evals=hyperparameters["n_evals"],
    )
    currency = estimate.currency
    available = external.credit_available(organization_id=organization.pk, currency=currency)
    return Quote(
        model=card,
        training_file=training,
        validation_file=validation,
        hyperparameters=hyperparameters,
        training_tokens=training_tokens,
        validation_tokens=validation_tokens,
        total_micros=estimate.total_micros,
        currency=currency,
        available_micros=available,
        source=source,
    )
