"""The training entry point on a node: one process, or one per GPU under torchrun.

    python -m runtime.launch --spec spec.json --artifacts DIR
    torchrun --nproc-per-node 8 -m runtime.launch --spec spec.json --artifacts DIR

No database and no Django settings: the work spec comes from a JSON file, artifacts
go to ``--artifacts`` (default: the configured artifact store). The node's agent
(providers/agent_train.py) runs it in the run's work directory and forwards what
it prints.

**Resuming.** The trainer resumes from the latest complete checkpoint it finds under
``<artifacts>/<output_dir>/checkpoints/``; the agent unpacks the checkpoint the
server names there before it starts this, so a run moved to another node goes on
from where the last one committed.

**Events.** Rank 0 prints one JSON object per line on stdout (a progress bar goes to
stderr instead on a terminal), each with an ``event``:

- ``started``: total_steps, resumed_from, examples, rows, tokens_per_epoch,
  world_size, device, parameters, trainable_parameters
- ``step``: step, total_steps, epoch, loss, learning_rate, tokens, tokens_per_second,
  eta_seconds
- ``eval``: step, eval_loss, tokens
- ``checkpoint``: step, key, final (the directory ``<artifacts>/<key>`` is complete
  when the line is printed; the agent uploads it before reading further)
- ``finished``: outcome, steps, final, merged (the final model's and merged
  weights' keys, "" when none)

Other output (warnings, tracebacks) is not JSON and is forwarded as log lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


class PrintReporter:
    """Progress as JSON lines on stdout (the bar goes to stderr on a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def _print(self, **fields: Any) -> None:
        if not self.quiet:
            print(json.dumps(fields), flush=True)

    def started(self, *, total_steps: int, resumed_from: int, details: dict[str, Any]) -> None:
        self._print(event="started", total_steps=total_steps, resumed_from=resumed_from, **details)

    def stepped(self, report) -> None:
        self._print(
            event="step",
            step=report.step,
            total_steps=report.total_steps,
            epoch=report.epoch,
            loss=round(report.loss, 6),
            learning_rate=report.learning_rate,
            tokens=report.tokens,
            tokens_per_second=round(report.tokens_per_second, 1),
            eta_seconds=round(report.eta_seconds, 1),
        )

    def evaluated(self, *, step: int, loss: float, tokens: int) -> None:
        self._print(event="eval", step=step, eval_loss=round(loss, 6), tokens=tokens)

    def checkpointed(self, *, step: int, key: str, final: bool, gpu_seconds: float) -> None:
        self._print(event="checkpoint", step=step, key=key, final=final)

    def stop_reason(self) -> str | None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.launch")
    parser.add_argument("--spec", type=Path, required=True, help="a work spec as JSON")
    parser.add_argument("--artifacts", type=Path, help="artifact directory")
    parser.add_argument("--result", type=Path, help="write the outcome here as JSON")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))

    from runtime.spec import WorkSpec
    from runtime.storage import LocalStorage, default_storage
    from runtime.trainer import train

    spec = WorkSpec.from_dict(json.loads(args.spec.read_text()))
    storage = LocalStorage(args.artifacts) if args.artifacts else default_storage()
    reporter = PrintReporter(quiet=sys.stderr.isatty())
    trained = train(spec, storage=storage, reporter=reporter)
    result: dict[str, Any] = {
        "outcome": trained.status,
        "steps": trained.steps,
        "losses": trained.losses,
        "final": trained.final_key,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    if rank == 0:
        reporter._print(
            event="finished",
            outcome=trained.status,
            steps=trained.steps,
            final=trained.final_key or "",
            merged=trained.merged_key or "",
        )
    if args.result and rank == 0:
        args.result.write_text(json.dumps(result))
    return 0 if trained.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
