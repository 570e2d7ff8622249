"""The training entry point for a node: one process, or one per GPU under torchrun.

    python -m runtime.launch --spec job.json [--artifacts DIR]      # no database
    python -m runtime.launch --job ft-123                           # a claimed run
    torchrun --nproc_per_node 8 -m runtime.launch --job ft-123      # DDP, same code

With ``--spec`` the work spec is read from a JSON file and progress goes to the
terminal (a progress bar on a TTY, a JSON line per step otherwise); checkpoints go
to ``--artifacts`` (default: the configured artifact store). With ``--job`` Django is
set up, rank 0 claims the run and reports as the dramatiq worker does, and the
other ranks train beside it.
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
            loss=round(report.loss, 5),
            tokens_per_second=round(report.tokens_per_second),
            eta_seconds=round(report.eta_seconds, 1),
        )

    def evaluated(self, *, step: int, loss: float, tokens: int) -> None:
        self._print(event="eval", step=step, eval_loss=round(loss, 5), tokens=tokens)

    def checkpointed(self, *, step: int, key: str, final: bool, gpu_seconds: float) -> None:
        self._print(event="checkpoint", step=step, key=key, final=final)

    def stop_reason(self) -> str | None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.launch")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", type=Path, help="a work spec as JSON")
    source.add_argument("--job", help="the job id of a submitted training run")
    parser.add_argument("--artifacts", type=Path, help="artifact directory (--spec only)")
    parser.add_argument("--result", type=Path, help="write the outcome here as JSON")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))

    if args.job:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        import django

        django.setup()
        from runtime import services
        from runtime.models import TrainingRun
        from runtime.spec import WorkSpec
        from runtime.storage import default_storage
        from runtime.trainer import train

        if rank == 0:
            outcome = services.training_run_execute(job_id=args.job)
        else:
            run = TrainingRun.objects.get(job_id=args.job)
            train(WorkSpec.from_dict(run.spec), storage=default_storage(), progress_bar=False)
            outcome = "worker rank done"
        result: dict[str, Any] = {"outcome": outcome}
    else:
        from runtime.spec import WorkSpec
        from runtime.storage import LocalStorage, default_storage
        from runtime.trainer import train

        spec = WorkSpec.from_dict(json.loads(args.spec.read_text()))
        storage = LocalStorage(args.artifacts) if args.artifacts else default_storage()
        trained = train(
            spec,
            storage=storage,
            reporter=PrintReporter(quiet=sys.stderr.isatty()),
        )
        result = {
            "outcome": trained.status,
            "steps": trained.steps,
            "losses": trained.losses,
            "final": trained.final_key,
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        }
    if args.result and rank == 0:
        args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
