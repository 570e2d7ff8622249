"""The train kind of the node protocol, over the API without agent processes: the
claim's signed URLs (scoped to one lease, one key, one method; expiring), uploads
(content addressed, hash and size checked, committed once) and the run's reports
(bounded, fenced by the attempt)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from core.followers import followers_run_until_idle
from marketplace import services as market
from marketplace.assignments import blobs
from marketplace.assignments.models import Assignment, AssignmentUpload
from marketplace.models import Lease
from marketplace.workloads.followers import WorkloadsFollower
from runtime.selectors import training_events
from tests.marketplace.conftest import fund, offer
from tests.node.conftest import agent_client, agent_node
from tests.node.training import chat_records, finetune_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _dirs(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.RUNTIME_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.ASSIGNMENT_BLOB_DIR = tmp_path / "blobs"
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_claim_hands_out_urls_for_one_lease_key_and_method(claimed, settings, client):
    _a, _, job, run, _, claim = claimed
    assert claim["kind"] == "train" and claim["attempt"] == 1
    assert claim["spec"]["work"]["job_id"] == job.public_id
    assert "checkpoint" not in claim["downloads"]  # nothing committed yet
    url = _path(claim["downloads"]["training_file"]["url"])
    # the signature is the credential: no key needed, and the bytes are the dataset
    got = client.get(url)
    assert got.status_code == 200
    assert b"".join(got.streaming_content) == chat_records(24)
    # not for another method, not tampered with, not past its time
    assert client.put(url, b"x", content_type="application/octet-stream").status_code == 403
    assert client.get(url[:-3] + "abc").status_code == 403
    settings.ASSIGNMENT_URL_TTL_SECONDS = 0
    expired = client.get(url)
    assert expired.status_code == 403 and "expired" in expired.json()["error"]["message"]
    settings.ASSIGNMENT_URL_TTL_SECONDS = 300
    # and not once its lease has ended
    market.lease_end(lease=Lease.objects.get(pk=run.lease_id), reason="test")
    assert client.get(url).status_code == 403


def test_an_upload_is_kept_only_with_its_hash_and_size_and_committed_once(claimed, client):
    a, b, job, run, agent, _claim = claimed
    base = f"/api/v1/agent/nodes/{a.node.pk}/runs/{run.pk}/uploads"
    body = _tar({"COMPLETE": b"2", "adapter_model.safetensors": b"weights"})
    key = f"jobs/{job.public_id}/checkpoints/step-000001"
    declared = agent.post(
        base,
        {"attempt": 1, "key": key, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)},
        format="json",
    )
    assert declared.status_code == 200, declared.content
    upload = declared.json()
    assert upload["present"] is False and upload["kind"] == "checkpoint" and upload["step"] == 1
    commit = f"{base}/{upload['id']}/commit"
    # nothing PUT yet: the commit is refused
    early = agent.post(commit, {"attempt": 1}, format="json")
    assert early.status_code == 409 and early.json()["error"]["details"]["reason"] == "not_uploaded"
    # other bytes under the signed URL are refused and nothing is kept
    put = _path(upload["url"])
    wrong = client.put(put, body[:-1] + b"!", content_type="application/octet-stream")
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "blob_mismatch"
    assert blobs.blob_store().stat(blobs.blob_key(upload["sha256"])) is None
    assert client.put(put, body, content_type="application/octet-stream").status_code == 200
    done = agent.post(commit, {"attempt": 1}, format="json")
    assert done.status_code == 200 and done.json()["committed"] is True
    assert Path(done.json()["location"], "adapter_model.safetensors").read_bytes() == b"weights"
    # a retry answers the same and records nothing twice; a repeat declaration needs no PUT
    assert agent.post(commit, {"attempt": 1}, format="json").json() == done.json()
    again = agent.post(
        base,
        {"attempt": 1, "key": key, "sha256": upload["sha256"], "size": len(body)},
        format="json",
    ).json()
    assert again["present"] is True and again["url"] is None and again["id"] == upload["id"]
    saved = [e for e in training_events(job_id=job.public_id) if e.type == "CheckpointSaved"]
    assert [e.payload["step"] for e in saved] == [1]
    # the checkpoint is what the next claim resumes from
    from marketplace.assignments import training

    assert training.last_checkpoint(job.public_id).step == 1
    # keys outside the job's output, another node's key, a stale attempt
    outside = agent.post(
        base,
        {"attempt": 1, "key": "jobs/other/final", "sha256": "0" * 64, "size": 1},
        format="json",
    )
    assert outside.status_code == 400 and "key" in outside.json()["error"]["message"]
    other = agent_client(b.key).post(
        f"/api/v1/agent/nodes/{a.node.pk}/runs/{run.pk}/uploads",
        {"attempt": 1, "key": key, "sha256": "0" * 64, "size": 1},
        format="json",
    )
    assert other.status_code == 404
    stale = agent.post(
        base, {"attempt": 2, "key": key, "sha256": "0" * 64, "size": 1}, format="json"
    )
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_attempt"
    assert AssignmentUpload.objects.count() == 1


def test_train_reports_are_checked_and_bounded(claimed):
    a, _, job, run, agent, claim = claimed
    url = f"/api/v1/agent/nodes/{a.node.pk}/runs/{run.pk}/events"

    def post(batch: int, *events: dict):  # type: ignore[no-untyped-def]
        return agent.post(
            url, {"attempt": 1, "batch": batch, "events": list(events)}, format="json"
        )

    early = post(1, {"type": "step", "data": {"step": 1, "loss": 1.0}})
    assert early.status_code == 400 and "before started" in early.json()["error"]["message"]
    assert post(1, {"type": "started"}).status_code == 200
    total = claim["spec"]["plan"]["total_steps"]
    beyond = post(2, {"type": "step", "data": {"step": total + 1, "loss": 1.0}})
    assert beyond.status_code == 400 and "step" in beyond.json()["error"]["message"]
    bad = post(2, {"type": "step", "data": {"step": 1, "loss": -1}})
    assert bad.status_code == 400
    missing = post(2, {"type": "training_started", "data": {"total_steps": 3}})
    assert missing.status_code == 400
    # exit 0 without a committed final model is a failure, not a success
    ended = post(
        2, {"type": "step", "data": {"step": 1, "loss": 2.5}}, {"type": "finished", "exit_code": 0}
    )
    assert ended.status_code == 200
    run.refresh_from_db()
    assert run.state == "failed" and "no final model" in run.failure_reason
    failed = [e for e in training_events(job_id=job.public_id) if e.type == "TrainingFailed"]
    assert failed and failed[0].payload["will_retry"] is False


def test_a_train_run_its_node_never_claims_is_requeued_and_its_lease_billed_nothing(cast):
    from datetime import timedelta

    from django.utils import timezone

    from marketplace.assignments.services import assignments_reap
    from marketplace.workloads.models import FineTuneJob
    from providers.models import Node

    # given: a job leased on a node whose agent never comes
    a = agent_node(cast.provider_a, "silent-a", f"{cast.provider_a.pk}-sa")
    offer(a.node, count=2)
    fund(cast.buyer_a, 50_000_000)
    job = finetune_job(cast.buyer_a, examples=24, epochs=1, batch_size=4, checkpoints=1)
    market.matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    run = Assignment.objects.get(kind="train", workload_id=job.public_id)
    # when: two TTLs pass without a claim (one does not)
    assert assignments_reap(now=timezone.now() + timedelta(seconds=30)) == 0
    assert assignments_reap(now=timezone.now() + timedelta(seconds=61)) == 1
    followers_run_until_idle([WorkloadsFollower()])
    # then: the run is re-queued, the lease failed at its start, the node unhealthy
    run.refresh_from_db()
    assert run.state == "failed" and "did not claim" in run.failure_reason
    lease = Lease.objects.get(pk=run.lease_id)
    assert lease.state == Lease.State.FAILED and lease.gpu_seconds_billed == 0
    assert Node.objects.get(pk=a.node.pk).health == Node.Health.UNHEALTHY
    assert FineTuneJob.objects.get(pk=job.pk).status == "queued"


def test_an_upload_larger_than_the_request_cap_streams_through(claimed, client, settings):
    a, _, job, run, agent, _claim = claimed
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    body = _tar({"COMPLETE": b"final", "model.safetensors": bytes(range(256)) * 13_000})
    assert len(body) > 3 * 1024 * 1024
    upload = agent.post(
        f"/api/v1/agent/nodes/{a.node.pk}/runs/{run.pk}/uploads",
        {
            "attempt": 1,
            "key": f"jobs/{job.public_id}/final",
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": len(body),
        },
        format="json",
    ).json()
    put = client.put(_path(upload["url"]), body, content_type="application/octet-stream")
    assert put.status_code == 200, put.content
    assert blobs.blob_store().stat(blobs.blob_key(upload["sha256"])) == len(body)


def test_a_run_its_agent_gives_back_moves_to_another_node(claimed):
    from marketplace.workloads.models import FineTuneJob

    a, _, job, run, agent, _claim = claimed
    url = f"/api/v1/agent/nodes/{a.node.pk}/runs/{run.pk}/events"
    given_back = agent.post(
        url,
        {
            "attempt": 1,
            "batch": 1,
            "events": [
                {"type": "started"},
                {"type": "failed", "reason": "the agent is stopping: killed", "retry": True},
            ],
        },
        format="json",
    )
    assert given_back.status_code == 200 and given_back.json()["stop"] is True
    followers_run_until_idle([WorkloadsFollower()])
    run.refresh_from_db()
    assert run.state == "failed"
    failed = [e for e in training_events(job_id=job.public_id) if e.type == "TrainingFailed"]
    assert failed[0].payload["will_retry"] is True
    assert Lease.objects.get(pk=run.lease_id).state == Lease.State.FAILED
    assert FineTuneJob.objects.get(pk=job.pk).status == "queued"
