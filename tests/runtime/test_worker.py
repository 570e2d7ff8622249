"""Training runs as leased work: through the real broker, at-least-once delivery,
cancellation, and a worker killed mid-run whose job resumes and is billed once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
from django.db import connection
from django.utils import timezone
from dramatiq import Worker

from core.errors import IdempotencyConflict
from metering.models import UsageEvent
from runtime import services
from runtime.datasets import dataset_load, rows_build
from runtime.models import TrainingRun
from runtime.selectors import training_events
from runtime.tasks import training_run
from runtime.trainer import _step_rows
from tests.subjects import job_of

from .conftest import SAMPLES, spec_dict

pytestmark = pytest.mark.django_db(transaction=True)


def step_tokens(spec: dict) -> dict[int, int]:
    """What each step of ``spec`` reads, computed apart from the trainer's loop."""
    hp = spec["hyperparameters"]
    _, examples = dataset_load(SAMPLES / "chat.jsonl", model="tandem/tiny-llama")
    rows = rows_build(examples, max_length=hp["max_seq_length"], packing=True)
    per_epoch = -(-len(rows) // hp["batch_size"])
    return {
        step + 1: sum(
            len(r.input_ids)
            for r in _step_rows(rows, step=step, batch_size=hp["batch_size"], seed=hp["seed"])
        )
        for step in range(per_epoch * hp["epochs"])
    }


def training_usage(job_id: str) -> dict[str, int]:
    return dict(
        UsageEvent.objects.filter(subject_id=job_id, type="tokens.training").values_list(
            "event_id", "quantity"
        )
    )


def run_worker(queue: str) -> None:
    broker = dramatiq.get_broker()
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        broker.join(queue, timeout=120_000)
        worker.join()
    finally:
        worker.stop()


def test_a_job_sent_to_the_broker_trains_reports_and_is_billed_per_step(cast):
    # given a job for buyer A, delivered twice (at-least-once)
    job_of(cast.buyer_a, public_id="ft-broker")  # usage is billed only for a real job
    spec = spec_dict("ft-broker", organization_id=cast.buyer_a.pk, n_checkpoints=2)
    broker = dramatiq.get_broker()
    broker.flush_all()
    training_run.send("ft-broker", cast.buyer_a.pk, spec)
    training_run.send("ft-broker", cast.buyer_a.pk, spec)

    # when a worker drains the queue
    run_worker(training_run.queue_name)

    # then it trained once: succeeded, one start, every step billed once with its tokens
    run = TrainingRun.objects.get(job_id="ft-broker")
    assert run.state == "succeeded" and run.attempt == 1
    assert Path(run.model_location, "adapter_model.safetensors").is_file()
    types = [e.type for e in training_events(job_id="ft-broker")]
    assert types[0] == "TrainingQueued" and types[-1] == "TrainingSucceeded"
    assert types.count("TrainingStarted") == 1 and types.count("CheckpointSaved") == 2
    expected = step_tokens(spec)
    assert training_usage("ft-broker") == {
        f"ft-broker:{step}:train": tokens for step, tokens in expected.items()
    }
    assert {e.tenant_id for e in training_events(job_id="ft-broker")} == {cast.buyer_a.pk}


def test_the_same_job_id_with_another_spec_is_refused(cast):
    services.training_run_submit(spec=spec_dict("ft-twice", organization_id=cast.buyer_a.pk))
    with pytest.raises(IdempotencyConflict):
        services.training_run_submit(
            spec=spec_dict("ft-twice", organization_id=cast.buyer_a.pk, epochs=2)
        )


def test_cancel_stops_a_running_job_at_the_next_step_and_keeps_the_last_checkpoint(cast, settings):
    job_of(cast.buyer_a, public_id="ft-cancel")  # usage is billed only for a real job
    spec = spec_dict("ft-cancel", organization_id=cast.buyer_a.pk, epochs=6, n_checkpoints=6)
    services.training_run_submit(spec=spec)
    outcome: list[str] = []

    def work() -> None:
        try:
            outcome.append(services.training_run_execute(job_id="ft-cancel"))
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while TrainingRun.objects.get(job_id="ft-cancel").checkpoint_step < 7:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        services.training_run_cancel(job_id="ft-cancel", organization_id=cast.buyer_a.pk)
    finally:
        thread.join(timeout=60)

    run = TrainingRun.objects.get(job_id="ft-cancel")
    assert outcome == ["cancelled"] and run.state == "cancelled"
    assert run.steps_done < run.total_steps == 42
    cancelled = training_events(job_id="ft-cancel")[-1]
    assert cancelled.type == "TrainingCancelled"
    assert cancelled.payload["checkpoint_step"] == run.checkpoint_step >= 7
    # the checkpoint is kept; a cancelled run is never claimed again
    artifacts = Path(settings.RUNTIME_ARTIFACT_DIR) / "jobs/ft-cancel/checkpoints"
    assert f"step-{run.checkpoint_step:06d}" in os.listdir(artifacts)
    assert services.training_run_execute(job_id="ft-cancel") == "skipped"
    # only the steps that ran are billed
    assert len(training_usage("ft-cancel")) == run.steps_done


def test_a_killed_workers_job_resumes_on_another_and_is_billed_once_per_step(cast, settings):
    # given a run taken by a worker process
    job_of(cast.buyer_a, public_id="ft-killed")  # usage is billed only for a real job
    spec = spec_dict("ft-killed", organization_id=cast.buyer_a.pk, epochs=3, n_checkpoints=3)
    services.training_run_submit(spec=spec)
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
        "TANDEM_MODEL_DIR": str(settings.RUNTIME_MODEL_DIR),
        "TANDEM_ARTIFACT_DIR": str(settings.RUNTIME_ARTIFACT_DIR),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    code = (
        "import django; django.setup(); from runtime import services; "
        "services.training_run_execute(job_id='ft-killed', worker='node-a')"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        # when it is killed outright past its first checkpoint, mid-way to the next
        deadline = time.monotonic() + 90
        while True:
            run = TrainingRun.objects.get(job_id="ft-killed")
            if run.checkpoint_step >= 7 and run.steps_done >= 9:
                break
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    killed = TrainingRun.objects.get(job_id="ft-killed")
    assert killed.state == "running" and killed.claimed_by == "node-a"
    billed_before = training_usage("ft-killed")
    assert len(billed_before) >= killed.steps_done

    # a redelivery while the dead worker's claim is fresh does nothing...
    assert services.training_run_execute(job_id="ft-killed", worker="node-b") == "skipped"
    # ...and once the claim has gone stale, another worker resumes from the checkpoint
    later = timezone.now() + timedelta(minutes=10)
    assert services.training_run_execute(job_id="ft-killed", worker="node-b", now=later) == (
        "succeeded"
    )

    run = TrainingRun.objects.get(job_id="ft-killed")
    assert run.state == "succeeded" and run.attempt == 2
    starts = [e.payload for e in training_events(job_id="ft-killed") if e.type == "TrainingStarted"]
    assert [s["resumed_from_step"] for s in starts] == [0, killed.checkpoint_step]
    # every step billed exactly once, with the tokens that step reads
    expected = step_tokens(spec)
    assert training_usage("ft-killed") == {
        f"ft-killed:{step}:train": tokens for step, tokens in expected.items()
    }


def test_a_run_the_broker_gives_up_on_fails_for_good_with_the_reason(cast):
    # given a submitted run whose every delivery failed (here: its file went missing)
    spec = spec_dict("ft-gives-up", organization_id=cast.buyer_a.pk)
    services.training_run_submit(spec=spec)
    message = training_run.message(spec["job_id"], cast.buyer_a.pk, spec)
    data = {**message.asdict(), "options": {"traceback": "FileNotFoundError: missing.jsonl"}}

    # when the broker's retries run out (dramatiq sends on_retry_exhausted)
    assert training_run.options["on_retry_exhausted"] == "training_run_exhausted"
    dramatiq.get_broker().get_actor("training_run_exhausted").fn(
        data, {"retries": 6, "max_retries": 5}
    )

    # then the run is failed, once, with the reason, and says it will not retry
    run = TrainingRun.objects.get(job_id="ft-gives-up")
    assert run.state == TrainingRun.State.FAILED
    assert "gave up after 6 attempts" in run.error and "missing.jsonl" in run.error
    failed = [e for e in training_events(job_id="ft-gives-up") if e.type == "TrainingFailed"]
    assert len(failed) == 1 and failed[0].payload["will_retry"] is False
