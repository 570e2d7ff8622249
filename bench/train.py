"""Training and inference throughput of the runtime, beside a plain transformers
``Trainer`` on the same model, data and hardware, in the same run.

    python bench/train.py [--quick] [--model NAME] [--repeat N]

- Training: LoRA fine-tuning of the model on the sample chat dataset (repeated
  ``--repeat`` times), one epoch, batch 8. The runtime packs examples into rows of
  up to 512 tokens; the baseline is ``transformers.Trainer`` with the same LoRA
  config and hyperparameters, padding each batch to its longest example (its
  usual collator). Both count the tokens of the examples (no padding) per second of
  training loop.
- MFU on CUDA: 6 x parameters x tokens/s over the GPU's dense bf16 peak.
- Inference: completion tokens/s of one engine at 1 and 16 concurrent requests.

Ends with one ``RESULT {json}`` line; ``ratio`` is runtime / baseline tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from runtime.datasets import IGNORE, dataset_load
from runtime.inference import Engine, SamplingParams
from runtime.registry import TINY_MODEL, model_info
from runtime.spec import WorkSpec
from runtime.storage import LocalStorage
from runtime.trainer import NullReporter, train

SAMPLE = ROOT / "runtime" / "samples" / "chat.jsonl"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


class Clock(NullReporter):
    def __init__(self) -> None:
        self.first = 0.0
        self.last = 0.0

    def started(self, **_):
        self.first = time.perf_counter()

    def stepped(self, report) -> None:
        self.last = time.perf_counter()


def dataset(work: Path, repeat: int) -> Path:
    path = work / "train.jsonl"
    lines = SAMPLE.read_text().splitlines()
    path.write_text("\n".join(lines * repeat) + "\n")
    return path


def hyper(lr: float) -> dict:
    return {
        "epochs": 1,
        "batch_size": 8,
        "learning_rate": lr,
        "lr_scheduler": "linear",
        "max_seq_length": 512,
        "n_checkpoints": 1,
        "seed": 1,
        "lora_r": 8,
        "lora_alpha": 16,
    }


def runtime_tokens_per_s(model: str, data: Path, work: Path) -> tuple[float, int, float]:
    spec = WorkSpec.from_dict(
        {
            "job_id": "bench",
            "organization_id": 1,
            "base_model": model,
            "training_file": str(data),
            "output_dir": "bench",
            "hyperparameters": hyper(2e-3),
        }
    )
    clock = Clock()
    result = train(spec, storage=LocalStorage(work / "rt"), reporter=clock, progress_bar=False)
    # the loop's time: from the start to the last step (checkpoint writing excluded)
    seconds = clock.last - clock.first
    return result.tokens / seconds, result.tokens, result.losses[-1]


def baseline_tokens_per_s(model: str, data: Path, work: Path) -> tuple[float, int, float]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from runtime.spec import DEFAULT_LORA_TARGETS

    _, examples = dataset_load(data, model=model)
    tokens = sum(e.tokens for e in examples)
    path = model_info(model).path
    cuda = torch.cuda.is_available()
    base = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa"
    )
    peft_model = get_peft_model(
        base,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=list(DEFAULT_LORA_TARGETS), task_type="CAUSAL_LM"
        ),
    )
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    pad = 0

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), IGNORE)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    args = TrainingArguments(
        output_dir=str(work / "baseline"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=2e-3,
        lr_scheduler_type="linear",
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        seed=1,
        bf16=cuda,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=peft_model, args=args, train_dataset=rows, data_collator=collate)
    out = trainer.train()
    return tokens / out.metrics["train_runtime"], tokens, out.training_loss


def inference_tokens_per_s(model: str, concurrency: int, max_tokens: int) -> float:
    engine = Engine(model=model, max_batch=max(16, concurrency))
    try:
        engine.complete(prompt="warm up", params=SamplingParams(max_tokens=4, seed=0))
        counts = [0] * concurrency

        def one(i: int) -> None:
            done = engine.complete(
                prompt=f"What is the capital of France? {i}",
                params=SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i),
            )
            counts[i] = done.completion_tokens

        threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.perf_counter() - start)
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    repeat = args.repeat or (4 if args.quick else 16)
    info = model_info(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = dataset(work, repeat)
        baseline, tokens, baseline_loss = baseline_tokens_per_s(args.model, data, work)
        ours, our_tokens, our_loss = runtime_tokens_per_s(args.model, data, work)
    assert tokens == our_tokens, (tokens, our_tokens)
    result = {
        "model": args.model,
        "parameters": info.parameters,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "training_tokens": tokens,
        "runtime_tokens_per_s": round(ours, 1),
        "trainer_tokens_per_s": round(baseline, 1),
        "runtime_final_loss": round(our_loss, 4),
        "trainer_mean_loss": round(baseline_loss, 4),
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak:
            result["mfu"] = round(6 * info.parameters * ours / peak, 4)
            result["trainer_mfu"] = round(6 * info.parameters * baseline / peak, 4)
    max_tokens = 32 if args.quick else 64
    result["inference_tokens_per_s_1"] = round(inference_tokens_per_s(args.model, 1, max_tokens), 1)
    result["inference_tokens_per_s_16"] = round(
        inference_tokens_per_s(args.model, 16, max_tokens), 1
    )
    result["ratio"] = round(ours / baseline, 3)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
