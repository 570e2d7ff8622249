"""The trainer: LoRA or full fine-tuning of a causal language model (transformers +
peft on PyTorch), one loop for CPU, one GPU and many GPUs.

Why our own loop rather than ``transformers.Trainer``: the work is billed per step,
resumed on another node mid-epoch and stopped by a flag, and the loop is short
enough to own. Owning it also lets the data be packed (several examples per
sequence, kept apart by position ids) and the loss normalised by the trained tokens
of the whole global batch, so one, two or eight GPUs compute the same update. It is
one module of ~740 lines on purpose: the step, its checkpoint and its resume share
the loop's state (RNG, data position, optimizer), and split apart they would pass it
all back and forth.

- **Device.** CUDA when present: bf16 autocast (LoRA: base weights held in bf16;
  full: fp32 master weights), SDPA attention (flash kernels where the GPU has them),
  TF32 matmuls, fused AdamW, optional gradient checkpointing. CPU otherwise, fp32.
  The same code path either way.
- **Distributed.** Under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes one
  GPU (``LOCAL_RANK``), NCCL on CUDA and gloo on CPU; the model is wrapped in DDP
  and each rank takes its share of every global batch. Rank 0 reports, checkpoints
  and decides to stop; the decision is broadcast so every rank stops at one step.
- **Determinism.** The data order of epoch ``e`` is a permutation seeded by
  ``seed + e``; step ``s`` reads a fixed slice of it. A checkpoint holds the
  weights being trained (safetensors), the optimizer and scheduler, every RNG state
  and the step, so resuming from it replays exactly what the uninterrupted run
  would have done.
- **Checkpoints** go to artifact storage under ``<output_dir>/checkpoints/step-N``
  (``n_checkpoints`` evenly spaced, the last at the end); the finished adapter (or
  model) under ``<output_dir>/final``, with merged weights in ``merged`` when asked.
- **Resume vs. start from a checkpoint.** A resume is this job's own latest
  checkpoint: weights, optimizer, scheduler, RNG and step, so the run goes on as if
  never stopped. ``spec.init_from`` is another job's checkpoint: only its weights
  (the adapter or the full weights, as that job trained) are loaded, into a model
  built as usual, and the run starts at step 0 with a fresh optimizer and schedule
  on its own data. A run that has a checkpoint of its own resumes from it, whether or
  not it started from another's.

Why one module of about 700 lines: the determinism above is a contract between the
loop, its data order, its checkpoints and the ranks' agreement to stop, and each
helper here (``_step_rows``, ``_rng_state``, ``_checkpoint``, ``_broadcast_flag``)
is one clause of it, read beside the loop that relies on it. The reader who checks
that a resumed run replays the uninterrupted one needs them on one page; the parts
that stand alone already live elsewhere (datasets, packing, the spec, storage).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from runtime.datasets import IGNORE, Row, dataset_load, rows_build, tokenizer_for
from runtime.registry import model_info
from runtime.spec import WorkSpec
from runtime.storage import ArtifactStorage

CHECKPOINT_STATE = "training_state.pt"
TRAINER_STATE = "trainer_state.json"
COMPLETE = "COMPLETE"


# --- what the loop tells the outside ---------------------------------------------


@dataclass(frozen=True, slots=True)
class StepReport:
    step: int  # 1-based, global
    total_steps: int
    epoch: int  # 1-based
    loss: float
    learning_rate: float
    tokens: int  # tokens read in this step, all ranks (what is billed)
    trained_tokens: int
    tokens_per_second: float
    eta_seconds: float
    elapsed_seconds: float


class Reporter(Protocol):
    """Rank 0's window to the world: events, usage, cancellation."""

    def started(self, *, total_steps: int, resumed_from: int, details: dict[str, Any]) -> None: ...

    def stepped(self, report: StepReport) -> None: ...

    def evaluated(self, *, step: int, loss: float, tokens: int) -> None: ...

    def checkpointed(self, *, step: int, key: str, final: bool, gpu_seconds: float) -> None: ...

    def stop_reason(self) -> str | None:
        """Checked after every step: a reason to stop now (``cancelled``, ``lost
        claim``) or None to go on."""
        ...


class NullReporter:
    """For ranks other than 0, benchmarks and scripts: hears nothing, never stops."""

    def started(self, *, total_steps: int, resumed_from: int, details: dict[str, Any]) -> None:
        pass

    def stepped(self, report: StepReport) -> None:
        pass

    def evaluated(self, *, step: int, loss: float, tokens: int) -> None:
        pass

    def checkpointed(self, *, step: int, key: str, final: bool, gpu_seconds: float) -> None:
        pass

    def stop_reason(self) -> str | None:
        return None


@dataclass(slots=True)
class TrainResult:
    status: str  # succeeded | stopped
    steps: int
    total_steps: int
    reason: str = ""
    losses: list[float] = field(default_factory=list)  # losses of the steps run here
    eval_losses: dict[int, float] = field(default_factory=dict)
    final_key: str = ""
    merged_key: str = ""
    resumed_from: int = 0
    tokens: int = 0
    seconds: float = 0.0


# --- distributed ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_init() -> World:
    """One process per GPU under torchrun; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local, device=device)


def _broadcast_flag(world: World, flag: bool) -> bool:
    if world.size == 1:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=world.device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def _barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


# --- the model ------------------------------------------------------------------


def model_load(spec: WorkSpec, world: World) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    params = spec.hyperparameters
    cuda = world.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # LoRA trains small fp32 adapters over a frozen base, which may as well sit in
    # bf16 on a GPU; full fine-tuning keeps fp32 master weights under autocast.
    dtype = torch.bfloat16 if cuda and params.lora else torch.float32
    path = model_info(spec.base_model).path
    base = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation="sdpa", local_files_only=True
    )
    base.config.use_cache = False
    if params.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model: torch.nn.Module = base
    if params.lora:
        from peft import LoraConfig, get_peft_model

        names = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
        targets = [t for t in params.lora_target_modules if t in names]
        if not targets:
            from core.errors import InvalidInput

            raise InvalidInput(
                "hyperparameters.lora_target_modules: none of "
                f"{', '.join(params.lora_target_modules)} is a module of {spec.base_model}",
                details={"field": "hyperparameters.lora_target_modules"},
            )
        if params.gradient_checkpointing:
            base.enable_input_require_grads()
        config = LoraConfig(
            r=params.lora_r,
            lora_alpha=params.lora_alpha,
            lora_dropout=params.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        # The adapter's initial weights come from the job's seed, not the process's.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft asks transformers a question it has renamed; nothing for us to do.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            torch.manual_seed(params.seed)
            model = get_peft_model(base, config)
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    return model.to(world.device)


def _save_weights(
    model: torch.nn.Module, directory: Path, *, lora: bool, tokenizer_from: Path
) -> None:
    """The adapter (peft layout) or the whole model (HF layout), as safetensors."""
    from peft import PeftModel
    from transformers import PreTrainedModel

    if not isinstance(model, PeftModel | PreTrainedModel):
        raise TypeError(f"cannot save a {type(model).__name__}: not a transformers or peft model")
    model.save_pretrained(str(directory), safe_serialization=True)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        source = tokenizer_from / name
        if source.is_file() and not (directory / name).exists():
            shutil.copy2(source, directory / name)


def _load_weights(model: torch.nn.Module, directory: Path, *, lora: bool) -> None:
    from safetensors.torch import load_file

    if lora:
        from peft import set_peft_model_state_dict

        state = load_file(str(directory / "adapter_model.safetensors"))
        set_peft_model_state_dict(model, state)
        return
    state = {}
    for file in sorted(directory.glob("model*.safetensors")):
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings are saved once; anything else missing is a broken checkpoint.
    missing = [m for m in missing if "lm_head" not in m]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: {missing[:3]} {unexpected[:3]}")


def _init_weights(model: torch.nn.Module, directory: Path, spec: WorkSpec) -> None:
    """Load another job's checkpoint's weights (not its optimizer, step or RNG)."""
    state_file = directory / TRAINER_STATE
    if not (directory / COMPLETE).is_file() or not state_file.is_file():
        raise RuntimeError(f"init_from {directory}: not a complete checkpoint")
    state = json.loads(state_file.read_text())
    wanted = {"base_model": spec.base_model, "training_type": spec.hyperparameters.training_type}
    for name, value in wanted.items():
        if state.get(name) != value:
            raise RuntimeError(
                f"init_from {directory}: trained as {name} {state.get(name)!r}, not {value!r}"
            )
    _load_weights(model, directory, lora=spec.hyperparameters.lora)


# --- data -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    tokens: int


def _collate(rows: list[Row], pad_id: int) -> Batch:
    length = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    # Padding continues as its own run of positions: a separate "sequence" in the
    # packed mask, never attended to by real tokens and never in the loss.
    positions = torch.arange(length, dtype=torch.long).repeat(len(rows), 1)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        positions[i, :n] = torch.tensor(row.position_ids)
        positions[i, n:] = torch.arange(length - n)
    return Batch(ids, labels, positions, sum(len(r.input_ids) for r in rows))


@lru_cache(maxsize=2)
def _epoch_order(rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed + epoch)
    return tuple(torch.randperm(rows, generator=generator).tolist())


def _step_rows(rows: list[Row], *, step: int, batch_size: int, seed: int) -> list[Row]:
    """The rows of 0-based global step ``step``: a fixed slice of its epoch's order."""
    per_epoch = math.ceil(len(rows) / batch_size)
    epoch, index = divmod(step, per_epoch)
    order = _epoch_order(len(rows), seed, epoch)
    return [rows[i] for i in order[index * batch_size : (index + 1) * batch_size]]


def _chunks(items: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _loss_sum(model: torch.nn.Module, batch: Batch, device: torch.device, autocast) -> torch.Tensor:
    ids = batch.input_ids.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    positions = batch.position_ids.to(device, non_blocking=True)
    with autocast():
        # No attention mask: the model derives a block-diagonal causal mask from the
        # position ids, which keeps packed examples from attending to each other.
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    shifted = logits[:, :-1, :].float()
    target = labels[:, 1:]
    return F.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)),
        target.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def _trained(rows: list[Row]) -> int:
    return sum(sum(1 for label in r.labels[1:] if label != IGNORE) for r in rows)


def _due(total: int, count: int) -> set[int]:
    """``count`` steps spread evenly over ``total``, the last one at ``total``."""
    if count <= 0:
        return set()
    return {max(1, total * k // count) for k in range(1, count + 1)}


# --- checkpoints ------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _rng_restore(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def latest_checkpoint(storage: ArtifactStorage, output_dir: str) -> tuple[int, str] | None:
    found = []
    for key in storage.list(f"{output_dir}/checkpoints"):
        name = key.rsplit("/", 1)[-1]
        if name.startswith("step-") and storage.exists(f"{key}/{COMPLETE}"):
            found.append((int(name.removeprefix("step-")), key))
    return max(found) if found else None


# --- the loop -----------------------------------------------------------------------


def _progress(enabled: bool | None, total: int, initial: int):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train(
    spec: WorkSpec,
    *,
    storage: ArtifactStorage,
    reporter: Reporter | None = None,
    work_dir: Path | None = None,
    world: World | None = None,
    micro_batch_size: int | None = None,
    progress_bar: bool | None = None,
) -> TrainResult:
    """Run (or resume) ``spec`` to the end, or until the reporter says stop."""
    world = world or world_init()
    reporter = reporter if (reporter is not None and world.is_main) else NullReporter()
    params = spec.hyperparameters
    started_at = time.perf_counter()
    info = model_info(spec.base_model)
    tokenizer = tokenizer_for(spec.base_model)
    max_length = min(params.max_seq_length or info.context_length, info.context_length)

    _, examples = dataset_load(
        spec.training_file,
        model=spec.base_model,
        format=spec.training_format,
        train_on_inputs=params.train_on_inputs,
    )
    rows = rows_build(examples, max_length=max_length, packing=params.packing)
    validation: list[Row] = []
    if spec.validation_file and params.n_evals:
        _, held_out = dataset_load(
            spec.validation_file, model=spec.base_model, train_on_inputs=params.train_on_inputs
        )
        validation = rows_build(held_out, max_length=max_length, packing=params.packing)
    per_epoch = math.ceil(len(rows) / params.batch_size)
    total = per_epoch * params.epochs
    checkpoint_steps = _due(total, params.n_checkpoints) | {total}
    eval_steps = _due(total, params.n_evals) if validation else set()
    micro = micro_batch_size or params.batch_size
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0

    model = model_load(spec, world)
    trainable = [p for p in model.parameters() if p.requires_grad]
    cuda = world.device.type == "cuda"
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": params.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=params.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        **({"fused": True} if cuda else {"foreach": True}),
    )
    from transformers import get_scheduler

    scheduler = get_scheduler(
        params.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(total * params.warmup_ratio),
        num_training_steps=total,
    )

    scratch = Path(work_dir or tempfile.mkdtemp(prefix=f"tandem-{spec.job_id}-"))
    scratch.mkdir(parents=True, exist_ok=True)
    start_step = 0
    found = latest_checkpoint(storage, spec.output_dir)
    if found is not None:
        start_step, key = found
        local = scratch / f"resume-{start_step}"
        if world.is_main or not local.exists():
            shutil.rmtree(local, ignore_errors=True)
            storage.get_dir(key, local)
        _load_weights(model, local, lora=params.lora)
        state = torch.load(local / CHECKPOINT_STATE, map_location=world.device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"][world.rank] if world.rank < len(state["rng"]) else state["rng"][0]
        _rng_restore(rng, world.device)
    else:
        if spec.init_from:
            _init_weights(model, Path(spec.init_from), spec)
        torch.manual_seed(params.seed)
        random.seed(params.seed)
    _barrier(world)

    if world.size > 1:
        core_model = model
        model = DistributedDataParallel(
            model, device_ids=[world.local_rank] if cuda else None, find_unused_parameters=False
        )
    else:
        core_model = model
    autocast = (
        (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    )

    result = TrainResult(
        status="succeeded", steps=start_step, total_steps=total, resumed_from=start_step
    )
    reporter.started(
        total_steps=total,
        resumed_from=start_step,
        details={
            "examples": len(examples),
            "rows": len(rows),
            "tokens_per_epoch": sum(len(r.input_ids) for r in rows),
            "world_size": world.size,
            "device": world.device.type,
            "parameters": info.parameters,
            "trainable_parameters": sum(p.numel() for p in trainable),
        },
    )
    bar = _progress(progress_bar, total, start_step) if world.is_main else None
    step_times: list[float] = []
    since_checkpoint = time.perf_counter()
    model.train()
    try:
        for step in range(start_step, total):
            tick = time.perf_counter()
            global_rows = _step_rows(
                rows, step=step, batch_size=params.batch_size, seed=params.seed
            )
            # Normalise by the whole global batch's trained tokens: every rank and
            # micro-batch adds its share of one mean, whatever the split.
            denominator = max(1, _trained(global_rows))
            mine = global_rows[world.rank :: world.size]
            chunks = list(_chunks(mine, micro)) or [[]]
            loss_total = torch.zeros((), device=world.device)
            for index, chunk in enumerate(chunks):
                if not chunk:
                    continue
                batch = _collate(chunk, pad_id)
                sync = index == len(chunks) - 1 or world.size == 1
                context = (
                    model.no_sync()
                    if (not sync and isinstance(model, DistributedDataParallel))
                    else nullcontext()
                )
                with context:
                    loss = _loss_sum(model, batch, world.device, autocast) / denominator
                    # DDP averages gradients over ranks; each rank's share is a sum.
                    (loss * world.size).backward()
                loss_total += loss.detach()
            if world.size > 1:
                dist.all_reduce(loss_total)
            grad_norm = None
            if params.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
            del grad_norm
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = float(loss_total.item())
            number = step + 1
            elapsed = time.perf_counter() - tick
            step_times.append(elapsed)
            recent = step_times[-20:]
            per_step = sum(recent) / len(recent)
            tokens = sum(len(r.input_ids) for r in global_rows)
            result.losses.append(loss_value)
            result.steps = number
            result.tokens += tokens
            reporter.stepped(
                StepReport(
                    step=number,
                    total_steps=total,
                    epoch=step // per_epoch + 1,
                    loss=loss_value,
                    learning_rate=float(scheduler.get_last_lr()[0]),
                    tokens=tokens,
                    trained_tokens=_trained(global_rows),
                    tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=per_step * (total - number),
                    elapsed_seconds=time.perf_counter() - started_at,
                )
            )
            if bar is not None:
                bar.set_postfix(
                    loss=f"{loss_value:.4f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}"
                )
                bar.update(1)
            if number in eval_steps:
                eval_loss, eval_tokens = _evaluate(
                    core_model, validation, world, micro, pad_id, autocast
                )
                result.eval_losses[number] = eval_loss
                reporter.evaluated(step=number, loss=eval_loss, tokens=eval_tokens)
                model.train()
            if number in checkpoint_steps:
                key = _checkpoint(
                    core_model,
                    optimizer,
                    scheduler,
                    storage=storage,
                    spec=spec,
                    step=number,
                    world=world,
                    scratch=scratch,
                    base_path=info.path,
                )
                now = time.perf_counter()
                reporter.checkpointed(
                    step=number,
                    key=key,
                    final=number == total,
                    gpu_seconds=(now - since_checkpoint) * world.size,
                )
                since_checkpoint = now
            if number < total:
                reason = reporter.stop_reason() if world.is_main else None
                if _broadcast_flag(world, reason is not None):
                    result.status = "stopped"
                    result.reason = reason or "stopped by rank 0"
                    break
        else:
            if world.is_main:
                result.final_key, result.merged_key = _finalize(
                    core_model, spec=spec, storage=storage, scratch=scratch, base_path=info.path
                )
            _barrier(world)
    finally:
        if bar is not None:
            bar.close()
        if work_dir is None and world.is_main:
            shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.perf_counter() - started_at
    return result


def _evaluate(
    model: torch.nn.Module, rows: list[Row], world: World, micro: int, pad_id: int, autocast
) -> tuple[float, int]:
    """Mean loss over the validation set's trained tokens (every rank takes a share)."""
    model.eval()
    mine = rows[world.rank :: world.size]
    totals = torch.zeros(2, device=world.device, dtype=torch.float64)
    with torch.no_grad():
        for chunk in _chunks(mine, micro):
            batch = _collate(chunk, pad_id)
            totals[0] += _loss_sum(model, batch, world.device, autocast).double()
            totals[1] += _trained(chunk)
    if world.size > 1:
        dist.all_reduce(totals)
    tokens = sum(len(r.input_ids) for r in rows)
    return float(totals[0]) / max(float(totals[1]), 1.0), tokens


def _checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    storage: ArtifactStorage,
    spec: WorkSpec,
    step: int,
    world: World,
    scratch: Path,
    base_path: Path,
) -> str:
    """Write what resuming needs, then publish it whole (the COMPLETE marker last)."""
    params = spec.hyperparameters
    local = scratch / f"step-{step:06d}"
    rng = _gather_rng(world)
    key = f"{spec.output_dir}/checkpoints/step-{step:06d}"
    if world.is_main:
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        _save_weights(model, local, lora=params.lora, tokenizer_from=base_path)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
            local / CHECKPOINT_STATE,
        )
        (local / TRAINER_STATE).write_text(
            json.dumps(
                {
                    "step": step,
                    "seed": params.seed,
                    "world_size": world.size,
                    "base_model": spec.base_model,
                    "training_type": params.training_type,
                },
                indent=2,
            )
        )
        (local / COMPLETE).write_text(str(step))
        storage.put_dir(local, key)
        shutil.rmtree(local, ignore_errors=True)
    _barrier(world)
    return key


def _gather_rng(world: World) -> list[dict[str, Any]]:
    state = _rng_state(world.device)
    if world.size == 1:
        return [state]
    gathered: list[Any] = [None] * world.size
    cpu_state = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    dist.all_gather_object(gathered, cpu_state)
    return gathered


def _finalize(
    model: torch.nn.Module,
    *,
    spec: WorkSpec,
    storage: ArtifactStorage,
    scratch: Path,
    base_path: Path,
) -> tuple[str, str]:
    params = spec.hyperparameters
    local = scratch / "final"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    _save_weights(model, local, lora=params.lora, tokenizer_from=base_path)
    (local / COMPLETE).write_text("final")
    final_key = f"{spec.output_dir}/final"
    storage.put_dir(local, final_key)
    merged_key = ""
    if params.lora and params.merge_weights:
        merged = scratch / "merged"
        shutil.rmtree(merged, ignore_errors=True)
        merged.mkdir(parents=True)
        full = model.merge_and_unload()  # type: ignore[operator]
        _save_weights(full, merged, lora=False, tokenizer_from=base_path)
        merged_key = f"{spec.output_dir}/merged"
        storage.put_dir(merged, merged_key)
    return final_key, merged_key
