"""Schema-constrained generation against free generation on one engine, same run.

    python bench/inference.py [--quick] [--model NAME] [--max-tokens N] [--rounds N]

- The engine (runtime/inference.py) decodes the same prompts at 1 and 16 concurrent
  requests, free and constrained to a JSON schema (xgrammar, runtime/structured.py),
  sampled at temperature 1 with a seed per request. Throughput is completion tokens
  per second of wall time over all requests of a round; each figure is the median of
  ``--rounds`` rounds, free and constrained rounds interleaved so drift hits both.
  On a shared machine wall time moves with the neighbours' load, so the tokens per
  CPU-second of this process (every thread) are reported beside it
  (``*_tokens_per_cpu_s``): what the constraint itself costs.
- Grammar compilation: the first compile of the schema (cold) against a cache hit.
- The first constrained request of an engine also pays xgrammar's import and the
  tokenizer's table (``setup_ms``), once per process; it is outside the rounds.

Ends with one ``RESULT {json}`` line; ``ratio`` is the smaller of constrained / free
tokens/s at 1 and at 16 requests (the goal: at least 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from runtime.inference import Engine, SamplingParams
from runtime.registry import TINY_MODEL, model_info
from runtime.structured import Constraint, canonical

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "kind": {"enum": ["buyer", "provider", "finance"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "kind", "tags", "active"],
    "additionalProperties": False,
}


def one_round(
    engine: Engine, concurrency: int, max_tokens: int, constraint: Constraint | None, seed: int
) -> tuple[float, float, int]:
    counts = [0] * concurrency

    def one(i: int) -> None:
        done = engine.complete(
            messages=[{"role": "user", "content": f"Describe buyer number {i} as JSON."}],
            params=SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed + i),
            constraint=constraint,
        )
        counts[i] = done.completion_tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    start, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return sum(counts) / elapsed, sum(counts) / cpu, sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    max_tokens = args.max_tokens or (48 if args.quick else 96)
    rounds = args.rounds or (5 if args.quick else 9)
    info = model_info(args.model)
    engine = Engine(model=args.model, max_batch=16)
    constraint = Constraint(schema=canonical(SCHEMA), field="response_format")
    result: dict[str, object] = {
        "model": args.model,
        "parameters": info.parameters,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "max_tokens": max_tokens,
        "rounds": rounds,
    }
    try:
        began = time.perf_counter()
        grammars = engine.grammars()
        result["setup_ms"] = round((time.perf_counter() - began) * 1000, 1)
        began = time.perf_counter()
        grammars.compile(constraint)
        result["compile_cold_ms"] = round((time.perf_counter() - began) * 1000, 3)
        hits = 1000
        began = time.perf_counter()
        for _ in range(hits):
            grammars.compile(constraint)
        result["compile_cached_us"] = round((time.perf_counter() - began) * 1e6 / hits, 2)
        # warm both paths
        one_round(engine, 2, 8, None, 0)
        one_round(engine, 2, 8, constraint, 0)
        ratios, cpu_ratios = [], []
        for concurrency in (1, 16):
            runs: dict[str, list[tuple[float, float, int]]] = {"free": [], "constrained": []}
            for r in range(rounds):
                for name, form in (("free", None), ("constrained", constraint)):
                    runs[name].append(one_round(engine, concurrency, max_tokens, form, 1000 * r))
            for name, done in runs.items():
                result[f"{name}_tokens_per_s_{concurrency}"] = round(
                    statistics.median(d[0] for d in done), 1
                )
                result[f"{name}_tokens_per_cpu_s_{concurrency}"] = round(
                    statistics.median(d[1] for d in done), 1
                )
                result[f"{name}_tokens_{concurrency}"] = sum(d[2] for d in done)
            ratio = (
                result[f"constrained_tokens_per_s_{concurrency}"]
                / result[f"free_tokens_per_s_{concurrency}"]  # type: ignore[operator]
            )
            cpu_ratio = (
                result[f"constrained_tokens_per_cpu_s_{concurrency}"]
                / result[f"free_tokens_per_cpu_s_{concurrency}"]  # type: ignore[operator]
            )
            result[f"ratio_{concurrency}"] = round(ratio, 3)
            result[f"cpu_ratio_{concurrency}"] = round(cpu_ratio, 3)
            ratios.append(ratio)
            cpu_ratios.append(cpu_ratio)
        result["grammar_compiles"] = grammars.compiles
        result["cpu_ratio"] = round(min(cpu_ratios), 3)
        result["ratio"] = round(min(ratios), 3)
    finally:
        engine.close()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
