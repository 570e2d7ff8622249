"""Demo training for ``make run``: the demo buyer's fine-tune of the built-in tiny
model on the sample chat dataset, trained for real (a few seconds on a CPU), so the
demo shows a job whose loss falls, its checkpoints and its per-step usage.

``load(buyer=...)`` needs the demo buyer organization; it returns the run. Safe on
every run: the job id is fixed, a finished run is left as it is (no new usage, no
new events), and an unfinished one (a demo interrupted midway) resumes.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from core.models import Organization
from runtime import services
from runtime.models import TrainingRun

DEMO_JOB = "ft-demo-tiny"
SAMPLES = Path(__file__).resolve().parent / "samples"


def load(*, buyer: Organization) -> TrainingRun:
    services.training_run_submit(
        spec={
            "job_id": DEMO_JOB,
            "organization_id": buyer.pk,
            "base_model": "tandem/tiny-llama",
            "training_file": str(SAMPLES / "chat.jsonl"),
            "validation_file": str(SAMPLES / "chat_validation.jsonl"),
            "output_dir": f"jobs/{DEMO_JOB}",
            "hyperparameters": {
                "epochs": 2,
                "batch_size": 4,
                "learning_rate": 1e-2,
                "max_seq_length": 128,
                "n_checkpoints": 2,
                "n_evals": 2,
                "seed": 7,
            },
        }
    )
    # An interrupted earlier demo left the run claimed by a process that is gone.
    services.training_run_execute(
        job_id=DEMO_JOB, worker="demo", now=timezone.now() + timedelta(days=1)
    )
    return TrainingRun.objects.get(job_id=DEMO_JOB)
