"""The work spec: everything a training run needs, as plain data.

A fine-tune job (the API, another app) hands the runtime a spec as JSON through the
job's train assignment; the leased node's agent writes it to ``spec.json`` (its
datasets' paths made local) and ``runtime.launch`` (under torchrun for several GPUs)
reads it from there. ``WorkSpec.from_dict`` checks every field and raises
``InvalidInput`` naming it, so a bad job is refused before any GPU is touched.

Hyperparameters follow what Together and OpenAI expose: epochs, batch size, learning
rate, scheduler, warmup ratio, weight decay, max grad norm, checkpoints, evaluations,
seed, LoRA rank/alpha/dropout/target modules (or full fine-tuning), train_on_inputs.
No torch here: the web tier imports this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from core.errors import InvalidInput

SCHEDULERS = ("cosine", "linear", "constant")
DATASET_FORMATS = ("auto", "text", "messages", "prompt_completion", "parquet")
DEFAULT_LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


def _bad(field_name: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field_name}: {message}", details={"field": field_name})


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    epochs: int = 1
    batch_size: int = 8  # packed sequences per optimizer step (the global batch)
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    n_checkpoints: int = 1
    n_evals: int = 0
    seed: int = 42
    lora: bool = True  # False: full fine-tuning
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    train_on_inputs: bool = False
    packing: bool = True
    max_seq_length: int = 0  # 0: the model's context length
    gradient_checkpointing: bool = False
    merge_weights: bool = False  # also save merged full weights at the end (LoRA)

    @property
    def training_type(self) -> str:
        return "lora-sft" if self.lora else "full-sft"

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Hyperparameters:
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise _bad(f"hyperparameters.{unknown[0]}", "is not a known hyperparameter")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            name = f"hyperparameters.{f.name}"
            value = raw[f.name]
            default = getattr(cls(), f.name)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise _bad(name, "must be true or false")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise _bad(name, "must be an integer")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise _bad(name, "must be a number")
                if not math.isfinite(value):
                    raise _bad(name, "must be finite")
                value = float(value)
            elif isinstance(default, tuple):
                if (
                    not isinstance(value, list | tuple)
                    or not value
                    or not all(isinstance(v, str) and v for v in value)
                ):
                    raise _bad(name, "must be a non-empty list of module names")
                value = tuple(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise _bad(name, "must be a string")
            values[f.name] = value
        params = cls(**values)
        params.check()
        return params

    def check(self) -> None:
        def need(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise _bad(f"hyperparameters.{name}", message)

        need(1 <= self.epochs <= 100, "epochs", "must be from 1 to 100")
        need(1 <= self.batch_size <= 4096, "batch_size", "must be from 1 to 4096")
        need(0 < self.learning_rate <= 1, "learning_rate", "must be in (0, 1]")
        need(
            self.lr_scheduler in SCHEDULERS,
            "lr_scheduler",
            f"must be one of {', '.join(SCHEDULERS)}",
        )
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        need(0 <= self.weight_decay <= 1, "weight_decay", "must be in [0, 1]")
        need(self.max_grad_norm >= 0, "max_grad_norm", "must be 0 (off) or more")
        need(1 <= self.n_checkpoints <= 100, "n_checkpoints", "must be from 1 to 100")
        need(0 <= self.n_evals <= 100, "n_evals", "must be from 0 to 100")
        need(0 <= self.seed < 2**32, "seed", "must be from 0 to 2^32 - 1")
        need(1 <= self.lora_r <= 1024, "lora_r", "must be from 1 to 1024")
        need(1 <= self.lora_alpha <= 4096, "lora_alpha", "must be from 1 to 4096")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        need(self.max_seq_length >= 0, "max_seq_length", "must be 0 (the model's) or more")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lora_target_modules"] = list(self.lora_target_modules)
        return out


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """The lease the work runs on, when GPU time is reported for it."""

    id: str
    provider_organization_id: int
    gpu_model: str
    price_micros_per_hour: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LeaseInfo:
        try:
            lease = cls(
                id=str(raw["id"]),
                provider_organization_id=int(raw["provider_organization_id"]),
                gpu_model=str(raw["gpu_model"]),
                price_micros_per_hour=int(raw["price_micros_per_hour"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(
                "lease",
                f"needs id, provider_organization_id, gpu_model, price_micros_per_hour ({exc})",
            ) from None
        return lease


@dataclass(frozen=True, slots=True)
class WorkSpec:
    job_id: str
    organization_id: int
    base_model: str
    training_file: str
    output_dir: str  # the artifact key prefix in storage (e.g. "jobs/ft-123")
    training_format: str = "auto"
    validation_file: str | None = None
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    lease: LeaseInfo | None = None
    # A directory holding another job's checkpoint whose weights (the LoRA adapter or
    # the full weights) this run starts from, with a fresh optimizer at step 0: not a
    # resume, which restores this job's own checkpoint whole (trainer.py).
    init_from: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WorkSpec:
        if not isinstance(raw, dict):
            raise _bad("spec", "must be an object")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise _bad(unknown[0], "is not a field of a work spec")
        for name in ("job_id", "base_model", "training_file", "output_dir"):
            value = raw.get(name)
            if not isinstance(value, str) or not value:
                raise _bad(name, "is required (a non-empty string)")
        job_id = raw["job_id"]
        if len(job_id) > 100 or not all(c.isalnum() or c in "-_." for c in job_id):
            raise _bad("job_id", "must be at most 100 letters, digits, '-', '_' or '.'")
        org = raw.get("organization_id")
        if isinstance(org, bool) or not isinstance(org, int) or org < 1:
            raise _bad("organization_id", "must be a positive integer")
        fmt = raw.get("training_format", "auto")
        if fmt not in DATASET_FORMATS:
            raise _bad("training_format", f"must be one of {', '.join(DATASET_FORMATS)}")
        validation = raw.get("validation_file")
        if validation is not None and (not isinstance(validation, str) or not validation):
            raise _bad("validation_file", "must be a path or null")
        init_from = raw.get("init_from")
        if init_from is not None and (not isinstance(init_from, str) or not init_from):
            raise _bad("init_from", "must be a checkpoint directory or null")
        lease = raw.get("lease")
        return cls(
            job_id=job_id,
            organization_id=org,
            base_model=raw["base_model"],
            training_file=raw["training_file"],
            output_dir=raw["output_dir"],
            training_format=fmt,
            validation_file=validation,
            hyperparameters=Hyperparameters.from_dict(raw.get("hyperparameters")),
            lease=LeaseInfo.from_dict(lease) if lease is not None else None,
            init_from=init_from,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "organization_id": self.organization_id,
            "base_model": self.base_model,
            "training_file": self.training_file,
            "output_dir": self.output_dir,
            "training_format": self.training_format,
            "validation_file": self.validation_file,
            "hyperparameters": self.hyperparameters.to_dict(),
            "lease": asdict(self.lease) if self.lease is not None else None,
            "init_from": self.init_from,
        }
