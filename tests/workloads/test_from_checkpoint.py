"""Together's ``from_checkpoint``: the forms it takes, resolved in the caller's
organization only, and what the new job inherits from its source."""

from __future__ import annotations

import pytest
from django.utils import timezone

from marketplace.workloads.jobs import work_spec
from marketplace.workloads.models import FineTuneCheckpoint, FineTuneJob, new_public_id
from tests.workloads.market import buyer_credit
from tests.workloads.test_jobs import TINY, running_job, uploaded

pytestmark = pytest.mark.django_db


@pytest.fixture
def source(cast, chat_bytes) -> FineTuneJob:
    """Buyer A's finished LoRA job with checkpoints at steps 3 and 6 (final)."""
    buyer_credit(cast.buyer_a, 25_000_000)
    file_id = uploaded(cast.client(cast.buyer_a), chat_bytes)
    job = running_job(cast.buyer_a, file_id, status="succeeded")
    for step in (3, 6):
        FineTuneCheckpoint.objects.create(
            job=job,
            public_id=new_public_id("ftckpt"),
            step=step,
            is_final=step == 6,
            adapter_path=f"/artifacts/unpacked/{step:064d}",
            created_at=timezone.now(),
        )
    return job


def _create(client, source: FineTuneJob, **body):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/fine-tunes",
        {"training_file": source.training_file.public_id, "n_epochs": 1, **body},
        format="json",
    )


def _error(answer, status: int, param: str) -> dict:  # type: ignore[no-untyped-def]
    assert answer.status_code == status, answer.content
    error = answer.json()["error"]
    assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    ("form", "step"),
    [
        (lambda job: job.public_id, 6),
        (lambda job: f"{job.public_id}:3", 3),
        (lambda job: job.checkpoints.get(step=3).public_id, 3),
        (lambda job: job.fine_tuned_model, 6),
        (lambda job: f"{job.fine_tuned_model}:3", 3),
    ],
    ids=["job", "job:step", "checkpoint", "output-name", "output-name:step"],
)
def test_each_form_starts_a_job_from_that_checkpoint(cast, source, form, step):
    answer = _create(cast.client(cast.buyer_a), source, from_checkpoint=form(source))

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["model"] == TINY  # the source's base model, none given
    assert body["from_checkpoint"] == f"{source.public_id}:{step}"
    assert body["training_type"]["type"] == "Lora"
    assert body["training_type"]["lora_r"] == source.hyperparameters["lora_r"]
    messages = [e["message"] for e in body["events"]]
    assert any(
        f"Starting from checkpoint {source.public_id}:{step}" in m and f"step {step}" in m
        for m in messages
    ), messages
    job = FineTuneJob.objects.get(public_id=body["id"])
    assert job.from_checkpoint == f"{source.public_id}:{step}"
    # the runtime is told where the source checkpoint's weights are
    assert work_spec(job)["init_from"] == f"/artifacts/unpacked/{step:064d}"


def test_a_job_from_the_base_model_has_no_init_from(cast, source):
    answer = _create(cast.client(cast.buyer_a), source, model=TINY)
    assert answer.status_code == 200, answer.content
    assert answer.json()["from_checkpoint"] is None
    assert work_spec(FineTuneJob.objects.get(public_id=answer.json()["id"]))["init_from"] is None


def test_another_orgs_job_or_checkpoint_is_not_found(cast, source, chat_bytes):
    buyer_credit(cast.buyer_b, 25_000_000)
    intruder = cast.client(cast.buyer_b)
    file_id = uploaded(intruder, chat_bytes)
    forms = [
        source.public_id,
        f"{source.public_id}:3",
        source.checkpoints.get(step=3).public_id,
        source.fine_tuned_model,
    ]
    for form in forms:
        answer = intruder.post(
            "/v1/fine-tunes",
            {"training_file": file_id, "from_checkpoint": form},
            format="json",
        )
        _error(answer, 404, "from_checkpoint")
        estimate = intruder.post(
            "/v1/fine-tunes/estimate-price",
            {"training_file": file_id, "from_checkpoint": form, "model": ""},
            format="json",
        )
        _error(estimate, 404, "from_checkpoint")
    limits = intruder.get("/v1/fine-tunes/models/limits", {"model_name": source.public_id})
    _error(limits, 404, "model_name")
    assert not FineTuneJob.objects.filter(organization=cast.buyer_b).exists()


def test_a_job_without_checkpoints_or_a_step_without_one_is_refused(cast, source, chat_bytes):
    client = cast.client(cast.buyer_a)
    bare = running_job(cast.buyer_a, source.training_file.public_id, status="failed")

    error = _error(_create(client, source, from_checkpoint=bare.public_id), 400, "from_checkpoint")
    assert "no checkpoint" in error["message"]
    error = _error(
        _create(client, source, from_checkpoint=f"{source.public_id}:4"), 400, "from_checkpoint"
    )
    assert "steps: 3, 6" in error["message"]
    _error(_create(client, source, from_checkpoint="ft-unknown"), 404, "from_checkpoint")
    _error(_create(client, source, from_checkpoint="ftckpt-unknown"), 404, "from_checkpoint")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tandem/tiny-gpt2"}, "model"),
        ({"training_type": {"type": "Full"}}, "training_type"),
        ({"training_type": {"type": "Lora", "lora_r": 16}}, "training_type.lora_r"),
        ({"training_type": {"type": "Lora", "lora_alpha": 64}}, "training_type.lora_alpha"),
        (
            {"training_type": {"type": "Lora", "lora_trainable_modules": "q_proj"}},
            "training_type.lora_trainable_modules",
        ),
    ],
)
def test_what_the_source_fixes_cannot_be_changed(cast, source, body, param):
    answer = _create(cast.client(cast.buyer_a), source, from_checkpoint=source.public_id, **body)
    _error(answer, 400, param)


def test_the_same_shape_given_again_is_accepted(cast, source):
    answer = _create(
        cast.client(cast.buyer_a),
        source,
        from_checkpoint=source.public_id,
        model=TINY,
        training_type={"type": "Lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1},
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["training_type"]["lora_dropout"] == 0.1  # not part of the shape


def test_the_clients_calls_before_create_answer_for_the_source(cast, source):
    client = cast.client(cast.buyer_a)
    for name in (source.public_id, source.checkpoints.get(step=3).public_id):
        limits = client.get("/v1/fine-tunes/models/limits", {"model_name": name})
        assert limits.status_code == 200, limits.content
        assert limits.json()["model_name"] == TINY
    estimate = client.post(
        "/v1/fine-tunes/estimate-price",
        {
            "training_file": source.training_file.public_id,
            "from_checkpoint": source.public_id,
            "model": "",
            "n_epochs": 1,
        },
        format="json",
    )
    assert estimate.status_code == 200, estimate.content
    assert estimate.json()["estimated_total_price_micros"] > 0
