"""Fine-tune jobs through both API shapes: input checks, tenancy, cancel, and the
projection of the order book's and runtime's events into job state."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from core import ports
from core.eventstore import NewEvent, event_append, stream_version
from core.followers import followers_run_until_idle
from core.models import Event
from core.ports import UsageRecord
from invoicing.accruals import usage_accruals
from invoicing.job_invoices import fine_tune_minimums
from invoicing.periods import minimum_transfer_id
from ledger.events import entry_stream_id
from ledger.selectors import available_credit
from marketplace.workloads.followers import WorkloadsFollower
from marketplace.workloads.models import File, FineTuneJob
from pricing.book import price_at
from pricing.rating import usage_rating
from tests.workloads.market import buyer_credit

pytestmark = pytest.mark.django_db

TINY = "tandem/tiny-llama"


def uploaded(client, content: bytes) -> str:
    response = client.post(
        "/v1/files",
        {"purpose": "fine-tune", "file": SimpleUploadedFile("train.jsonl", content)},
        format="multipart",
    )
    return response.json()["id"]


def running_job(org, file_id: str, *, status: str = "running") -> FineTuneJob:
    """A job as creating it leaves it, without going through the market."""
    file = File.objects.get(public_id=file_id)
    return FineTuneJob.objects.create(
        public_id=f"ft-{org.pk}{status[:3]}0000000000000000",
        organization=org,
        model=TINY,
        training_file=file,
        hyperparameters={
            "n_epochs": 2,
            "batch_size": 4,
            "learning_rate": 1e-4,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.0,
            "n_checkpoints": 1,
            "n_evals": 0,
            "lora_r": 8,
            "lora_alpha": 16.0,
            "lora_dropout": 0.0,
            "lora_trainable_modules": "all-linear",
        },
        seed=3,
        status=status,
        currency="USD",
        estimate_micros=5_000_000,
        training_tokens=400,
        fine_tuned_model=f"ft:{TINY}:buyer-a:{org.pk}{status}",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"training_file": "file-x"}, "model"),
        ({"model": TINY}, "training_file"),
        ({"model": "nobody/nothing", "training_file": "FILE"}, "model"),
        ({"model": TINY, "training_file": "file-missing"}, "training_file"),
        ({"model": TINY, "training_file": "FILE", "suffix": "no spaces allowed"}, "suffix"),
        (
            {"model": TINY, "training_file": "FILE", "hyperparameters": {"n_epochs": 0}},
            "n_epochs",
        ),
        (
            {"model": TINY, "training_file": "FILE", "hyperparameters": {"epochs": 2}},
            "hyperparameters.epochs",
        ),
        (
            {"model": TINY, "training_file": "FILE", "method": {"type": "reinforcement"}},
            "method.type",
        ),
        # not trained as SFT under a DPO price: refused until the runtime does DPO
        ({"model": TINY, "training_file": "FILE", "method": {"type": "dpo"}}, "method.type"),
    ],
)
def test_openai_create_names_the_bad_field(cast, chat_bytes, body, param):
    buyer = cast.client(cast.buyer_a)
    file_id = uploaded(buyer, chat_bytes)
    body = {k: (file_id if v == "FILE" else v) for k, v in body.items()}

    response = buyer.post("/v1/fine_tuning/jobs", body, format="json")

    assert response.status_code in (400, 404), response.content
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"training_type": {"type": "Half"}}, "training_type.type"),
        ({"training_method": {"method": "ppo"}}, "training_method.method"),
        ({"training_method": {"method": "dpo", "dpo_beta": 0.1}}, "training_method.method"),
        ({"n_epochs": "many"}, "n_epochs"),
        ({"learning_rate": 5}, "learning_rate"),
        ({"training_type": {"type": "Lora", "lora_r": 0}}, "lora_r"),
        ({"n_evals": 2}, "n_evals"),
    ],
)
def test_together_create_names_the_bad_field(cast, chat_bytes, body, param):
    buyer = cast.client(cast.buyer_a)
    file_id = uploaded(buyer, chat_bytes)

    response = buyer.post(
        "/v1/fine-tunes", {"model": TINY, "training_file": file_id, **body}, format="json"
    )

    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param


def test_invalid_file_cannot_start_a_job(cast, invalid_bytes):
    buyer = cast.client(cast.buyer_a)
    file_id = uploaded(buyer, invalid_bytes)

    for path, body in (
        ("/v1/fine_tuning/jobs", {"model": TINY, "training_file": file_id}),
        ("/v1/fine-tunes", {"model": TINY, "training_file": file_id}),
    ):
        error = buyer.post(path, body, format="json").json()["error"]
        assert error["code"] == "invalid_training_file"
        assert error["param"] == "training_file"
        assert "line 3:" in error["message"]
    assert not FineTuneJob.objects.exists()


def test_another_orgs_job_is_not_found_in_either_shape(cast, chat_bytes):
    owner = cast.client(cast.buyer_a)
    job = running_job(cast.buyer_a, uploaded(owner, chat_bytes))
    intruder = cast.client(cast.buyer_b)

    for method, path in (
        ("get", f"/v1/fine_tuning/jobs/{job.public_id}"),
        ("post", f"/v1/fine_tuning/jobs/{job.public_id}/cancel"),
        ("get", f"/v1/fine_tuning/jobs/{job.public_id}/events"),
        ("get", f"/v1/fine_tuning/jobs/{job.public_id}/checkpoints"),
        ("get", f"/v1/fine-tunes/{job.public_id}"),
        ("post", f"/v1/fine-tunes/{job.public_id}/cancel"),
        ("get", f"/v1/fine-tunes/{job.public_id}/events"),
        ("get", f"/v1/fine-tunes/{job.public_id}/checkpoints"),
        ("get", f"/v1/finetune/download?ft_id={job.public_id}"),
    ):
        response = getattr(intruder, method)(path)
        assert response.status_code == 404, path
    # the download's 404 is the JSON error whatever the client accepts
    hidden = intruder.get(
        f"/v1/finetune/download?ft_id={job.public_id}", HTTP_ACCEPT="application/octet-stream"
    )
    assert hidden.status_code == 404 and hidden["Content-Type"] == "application/json"
    assert hidden.json()["error"]["code"] == "fine-tune_job_not_found"
    assert intruder.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert intruder.get("/v1/fine-tunes").json()["data"] == []
    job.refresh_from_db()
    assert job.cancel_requested_at is None


def test_both_shapes_show_one_job_in_their_own_words(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    job = running_job(cast.buyer_a, uploaded(buyer, chat_bytes), status="succeeded")

    openai = buyer.get(f"/v1/fine_tuning/jobs/{job.public_id}").json()
    together = buyer.get(f"/v1/fine-tunes/{job.public_id}").json()

    assert openai["status"] == "succeeded"
    assert openai["fine_tuned_model"] == job.fine_tuned_model
    assert openai["hyperparameters"]["n_epochs"] == 2
    assert together["status"] == "completed"
    assert together["model_output_name"] == job.fine_tuned_model
    assert together["training_type"] == {
        "type": "Lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_trainable_modules": "all-linear",
    }


def test_cancel_a_queued_job_bills_nothing_and_finished_jobs_refuse(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    file_id = uploaded(buyer, chat_bytes)
    queued = running_job(cast.buyer_a, file_id, status="queued")
    done = running_job(cast.buyer_a, file_id, status="succeeded")

    cancelled = buyer.post(f"/v1/fine_tuning/jobs/{queued.public_id}/cancel").json()
    refused = buyer.post(f"/v1/fine-tunes/{done.public_id}/cancel")

    assert cancelled["status"] == "cancelled"
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "job_not_cancellable"
    queued.refresh_from_db()
    assert queued.trained_tokens is None and queued.steps_completed == 0


def _runtime(job_id: str, event_type: str, **payload) -> None:
    stream = f"training:{job_id}"
    event_append(
        stream_type="training",
        stream_id=stream,
        expected_version=stream_version(stream),
        events=[NewEvent(type=event_type, payload={"attempt": 1, **payload})],
    )


def test_runtime_events_become_job_events_checkpoints_and_a_result(cast, chat_bytes, tmp_path):
    buyer = cast.client(cast.buyer_a)
    job = running_job(cast.buyer_a, uploaded(buyer, chat_bytes))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    # given the runtime's stream for the job
    _runtime(
        job.public_id,
        "TrainingStarted",
        worker="w1",
        total_steps=4,
        resumed_from_step=0,
        examples=8,
        tokens_per_epoch=200,
        world_size=1,
        device="cpu",
        trainable_parameters=10,
    )
    for step in (1, 2, 3, 4):
        _runtime(
            job.public_id,
            "TrainingProgressed",
            step=step,
            total_steps=4,
            epoch=1,
            loss=2.0 / step,
            learning_rate=1e-4,
            tokens_per_second=900.0,
            eta_seconds=4 - step,
        )
    _runtime(job.public_id, "CheckpointSaved", step=4, location=str(adapter), final=True)
    _runtime(
        job.public_id,
        "TrainingSucceeded",
        steps=4,
        final_loss=0.5,
        model_location=str(adapter),
        merged_location="",
    )

    # when the follower runs (twice: a replay changes nothing)
    follower = WorkloadsFollower()
    followers_run_until_idle([follower])
    followers_run_until_idle([follower])

    # then
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.steps_completed == 4
    assert job.trained_tokens == 400 * 2
    events = buyer.get(f"/v1/fine_tuning/jobs/{job.public_id}/events?limit=100").json()["data"]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert len(metrics) == 4 and metrics[0]["data"]["step"] == 4
    checkpoints = buyer.get(f"/v1/fine-tunes/{job.public_id}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints] == [4]
    # the together client asks for application/octet-stream
    download = buyer.get(
        f"/v1/finetune/download?ft_id={job.public_id}&checkpoint=adapter",
        HTTP_ACCEPT="application/octet-stream",
    )
    assert download.status_code == 200
    assert download["Content-Type"] == "application/gzip"
    assert len(b"".join(download.streaming_content)) > 0


def test_cancelled_run_keeps_its_completed_steps_only(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    job = running_job(cast.buyer_a, uploaded(buyer, chat_bytes))
    job.total_steps = 10
    job.save()

    buyer.post(f"/v1/fine-tunes/{job.public_id}/cancel")
    assert buyer.get(f"/v1/fine-tunes/{job.public_id}").json()["status"] == "cancel_requested"
    _runtime(
        job.public_id,
        "TrainingProgressed",
        step=3,
        total_steps=10,
        epoch=1,
        loss=1.0,
        learning_rate=1e-4,
        tokens_per_second=1.0,
        eta_seconds=7,
    )
    _runtime(job.public_id, "TrainingCancelled", step=3, checkpoint_step=3)
    followers_run_until_idle([WorkloadsFollower()])

    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.steps_completed == 3
    assert job.trained_tokens == 400 * 2 * 3 // 10
    assert buyer.get(f"/v1/fine_tuning/jobs/{job.public_id}").json()["fine_tuned_model"] is None


# --- the job's bill: rated steps, and the minimum for a job that succeeds ------------


def _trained(job: FineTuneJob, step: int, tokens: int) -> None:
    """What the runtime meters after each training step."""
    ports.get(ports.UsagePort).record(
        [
            UsageRecord(
                id=f"{job.public_id}:{step}:train",
                source="runtime",
                type="tokens.training",
                organization_id=job.organization_id,
                subject_kind="job",
                subject_id=job.public_id,
                time=timezone.now(),
                quantity=tokens,
                dimensions={"model": TINY, "training_type": "lora-sft"},
            )
        ]
    )


def _minimum_charged(job: FineTuneJob) -> int:
    transfer_id = minimum_transfer_id(job.organization_id, job.public_id)
    entries = Event.objects.filter(stream_id=entry_stream_id(transfer_id))
    return sum(x for e in entries for _, side, x in e.payload["legs"] if side == "C")


def _available(org) -> int:  # type: ignore[no-untyped-def]
    return available_credit(organization_id=org.pk, currency="USD")


def _minimum() -> int:
    return price_at("fine_tune_minimum", at=timezone.now(), currency="USD").value


def test_a_succeeded_job_is_billed_the_minimum_once(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    job = running_job(cast.buyer_a, uploaded(buyer, chat_bytes))
    buyer_credit(cast.buyer_a, 20_000_000)
    before = _available(cast.buyer_a)
    # given two metered steps that come to far less than the minimum
    _trained(job, 1, 400)
    _trained(job, 2, 400)
    _runtime(job.public_id, "TrainingSucceeded", steps=2, final_loss=0.5, model_location="")

    # when the followers see the job end (twice: a replay bills nothing more)
    followers_run_until_idle([WorkloadsFollower(), fine_tune_minimums])
    followers_run_until_idle([WorkloadsFollower(), fine_tune_minimums])

    # then the job's bill is the minimum: its rated steps topped up, once
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert 0 < _minimum_charged(job) < _minimum()
    assert before - _available(cast.buyer_a) == _minimum()


@pytest.mark.parametrize(
    ("ending", "steps"),
    [
        ("TrainingCancelled", 3),  # cancelled after three steps: it pays them
        ("TrainingFailed", 2),  # failed mid-run: it pays the steps it ran
        ("TrainingFailed", 0),  # failed before any step: billed nothing
        ("TrainingCancelled", 0),  # cancelled before any step: billed nothing
        ("TrainingSucceeded", 0),  # nothing metered: nothing to top up, no crash
    ],
)
def test_only_a_succeeded_job_with_usage_owes_the_minimum(cast, chat_bytes, ending, steps):
    buyer = cast.client(cast.buyer_a)
    job = running_job(cast.buyer_a, uploaded(buyer, chat_bytes))
    buyer_credit(cast.buyer_a, 20_000_000)
    before = _available(cast.buyer_a)
    for step in range(1, steps + 1):
        _trained(job, step, 400)
    payload = {
        "TrainingCancelled": {"step": steps, "checkpoint_step": 0},
        "TrainingFailed": {"error": "CUDA error: an illegal memory access", "will_retry": False},
        "TrainingSucceeded": {"steps": 4, "final_loss": 0.5, "model_location": ""},
    }[ending]

    _runtime(job.public_id, ending, **payload)
    followers_run_until_idle([WorkloadsFollower(), fine_tune_minimums])
    followers_run_until_idle([usage_rating, usage_accruals])

    job.refresh_from_db()
    assert job.is_terminal
    assert _minimum_charged(job) == 0
    spent = before - _available(cast.buyer_a)
    assert (spent > 0) == (steps > 0)
    assert spent < _minimum()


@pytest.mark.parametrize("closed", ["LeasePreempted", "LeaseFailed"])
def test_a_job_whose_lease_is_preempted_or_fails_waits_to_resume(cast, chat_bytes, closed):
    # given a running job on lease 41 (closed-lease events do not name their workload)
    buyer = cast.client(cast.buyer_a)
    job = running_job(cast.buyer_a, uploaded(buyer, chat_bytes))
    FineTuneJob.objects.filter(pk=job.pk).update(lease_ref="41")
    other = running_job(cast.buyer_b, uploaded(cast.client(cast.buyer_b), chat_bytes))
    FineTuneJob.objects.filter(pk=other.pk).update(lease_ref="42")
    event_append(
        stream_type="lease",
        stream_id="lease-41",
        expected_version=stream_version("lease-41"),
        events=[NewEvent(type=closed, payload={"lease_id": 41, "order_id": 7, "reason": "x"})],
    )

    # when the follower sees it (twice: a replay changes nothing)
    followers_run_until_idle([WorkloadsFollower()])
    followers_run_until_idle([WorkloadsFollower()])

    # then that job waits for GPUs to resume from its last checkpoint; the other runs on
    job.refresh_from_db()
    other.refresh_from_db()
    assert job.status == FineTuneJob.Status.QUEUED
    assert other.status == FineTuneJob.Status.RUNNING
    restarted = job.events.filter(type="job_restarted")
    assert restarted.count() == 1 and "Lease 41 ended early" in restarted.get().message
