"""The demo's training run, on the embedded default (SQLite) and twice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metering.models import UsageEvent
from runtime import demo
from runtime.selectors import training_losses


@pytest.mark.django_db
def test_the_demo_trains_a_job_whose_loss_falls_and_loads_twice(cast):
    run = demo.load(buyer=cast.buyer_a)
    assert run.state == "succeeded" and run.steps_done == run.total_steps == 14
    losses = [loss for _, loss in training_losses(job_id=demo.DEMO_JOB)]
    assert len(losses) == 14 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    billed = UsageEvent.objects.filter(subject_id=demo.DEMO_JOB).count()
    assert billed == 14 + 2  # a training record per step, an evaluation record per eval

    again = demo.load(buyer=cast.buyer_a)
    assert again.pk == run.pk and again.attempt == run.attempt
    assert UsageEvent.objects.filter(subject_id=demo.DEMO_JOB).count() == billed


def test_the_demo_runs_on_sqlite(tmp_path, model_root):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "DRAMATIQ_BROKER_URL", "REDIS_URL"}
    }
    env.update(
        DEBUG="1",
        TANDEM_VAR_DIR=str(tmp_path),
        TANDEM_MODEL_DIR=str(model_root),
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    code = (
        "import django; django.setup(); "
        "from django.core.management import call_command; "
        "call_command('migrate', verbosity=0); "
        "from core import services; from runtime import demo; "
        "buyer = services.org_create(name='Demo buyer', kind='buyer'); "
        "run = demo.load(buyer=buyer); print(run.state, run.steps_done)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["succeeded", "14"]
