"""The train protocol's blobs on the S3-compatible store (TANDEM_BLOB_STORE=s3),
against a real S3 server on loopback (moto's): a node's upload through the presigned
PUT and its commit, the resumed run's download through the presigned GET, wrong
bytes or size refused with nothing recorded, and what each URL is signed for."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from botocore.exceptions import ClientError

from core.followers import followers_run_until_idle
from marketplace import services as market
from marketplace.assignments import blobs
from marketplace.assignments.models import Assignment, AssignmentUpload
from marketplace.assignments.s3blobs import S3BlobStore, sha256_base64
from marketplace.workloads.followers import WorkloadsFollower
from providers.agent_train import TransferError, _download, _put
from runtime.selectors import training_events
from tests.marketplace.conftest import offer
from tests.node.conftest import agent_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _dirs(settings, tmp_path: Path, s3_blobs) -> None:  # type: ignore[no-untyped-def]
    settings.RUNTIME_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.ASSIGNMENT_BLOB_DIR = tmp_path / "blobs"
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _declare(claimed, body: bytes, step: int = 1) -> dict:  # type: ignore[no-untyped-def]
    a, _, job, run, agent, _claim = claimed
    answer = agent.post(
        f"/api/v1/agent/nodes/{a.node.pk}/runs/{run.pk}/uploads",
        {
            "attempt": 1,
            "key": f"jobs/{job.public_id}/checkpoints/step-{step:06d}",
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": len(body),
        },
        format="json",
    )
    assert answer.status_code == 200, answer.content
    return answer.json()


def _commit(claimed, upload: dict):  # type: ignore[no-untyped-def]
    a, _, _job, run, agent, _claim = claimed
    return agent.post(
        f"/api/v1/agent/nodes/{a.node.pk}/runs/{run.pk}/uploads/{upload['id']}/commit",
        {"attempt": 1},
        format="json",
    )


def _file(tmp_path: Path, body: bytes, name: str = "upload.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(body)
    return path


def _saved_steps(job_id: str) -> list[int]:
    return [
        e.payload["step"] for e in training_events(job_id=job_id) if e.type == "CheckpointSaved"
    ]


def test_the_store_is_the_bucket_named_in_the_settings(s3_blobs, settings):
    store = blobs.blob_store()

    assert isinstance(store, S3BlobStore)
    assert store.bucket == settings.BLOB_S3_BUCKET
    assert blobs.blob_store() is store  # one client per configuration


def test_a_node_uploads_through_the_presigned_put_and_commits(claimed, s3_blobs, tmp_path):
    _a, _, job, _run, _agent, _claim = claimed
    body = _tar({"COMPLETE": b"1", "adapter_model.safetensors": b"weights"})
    upload = _declare(claimed, body)
    key = blobs.blob_key(upload["sha256"])
    # the URL is the bucket's, for this key, signed with the declared checksum
    url = urlsplit(upload["url"])
    query = parse_qs(url.query)
    assert unquote(url.path).endswith(f"/{key}")
    assert "x-amz-checksum-sha256" in query["X-Amz-SignedHeaders"][0].split(";")
    assert upload["headers"] == {
        "x-amz-sdk-checksum-algorithm": "SHA256",
        "x-amz-checksum-sha256": sha256_base64(upload["sha256"]),
    }
    # nothing PUT yet: the commit is refused
    early = _commit(claimed, upload)
    assert early.status_code == 409 and early.json()["error"]["details"]["reason"] == "not_uploaded"

    # the node's own PUT (providers.agent_train), with the headers it was given
    _put(upload["url"], _file(tmp_path, body), headers=upload["headers"])
    done = _commit(claimed, upload)

    assert done.status_code == 200, done.content
    assert done.json()["committed"] is True
    assert Path(done.json()["location"], "adapter_model.safetensors").read_bytes() == b"weights"
    stored = blobs.blob_store().head(key)
    assert stored == blobs.BlobHead(size=len(body), sha256=upload["sha256"])
    # a retry answers the same and records nothing twice; a repeat needs no PUT
    assert _commit(claimed, upload).json() == done.json()
    again = _declare(claimed, body)
    assert again["present"] is True and again["url"] is None and again["headers"] == {}
    assert _saved_steps(job.public_id) == [1]


def test_a_resumed_run_downloads_its_checkpoint_through_the_presigned_get(claimed, tmp_path):
    a, b, job, run, agent, _claim = claimed
    body = _tar({"COMPLETE": b"1", "adapter_model.safetensors": b"step one"})
    upload = _declare(claimed, body)
    _put(upload["url"], _file(tmp_path, body), headers=upload["headers"])
    assert _commit(claimed, upload).status_code == 200
    # node A gives the run back; the job is matched to node B, whose agent claims it
    given_back = agent.post(
        f"/api/v1/agent/nodes/{a.node.pk}/runs/{run.pk}/events",
        {
            "attempt": 1,
            "batch": 1,
            "events": [
                {"type": "started"},
                {"type": "failed", "reason": "the agent is stopping", "retry": True},
            ],
        },
        format="json",
    )
    assert given_back.status_code == 200
    followers_run_until_idle([WorkloadsFollower()])
    offer(b.node, count=2)
    market.matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    resumed = Assignment.objects.get(kind="train", workload_id=job.public_id, node=b.node)

    claim = agent_client(b.key).post(
        f"/api/v1/agent/nodes/{b.node.pk}/assignments/{resumed.pk}/claim"
    )

    assert claim.status_code == 200, claim.content
    checkpoint = claim.json()["downloads"]["checkpoint"]
    assert (checkpoint["step"], checkpoint["sha256"]) == (1, upload["sha256"])
    assert urlsplit(checkpoint["url"]).netloc == urlsplit(upload["url"]).netloc  # the bucket
    _download(checkpoint["url"], tmp_path / "resume.tar")  # the node's own GET
    assert (tmp_path / "resume.tar").read_bytes() == body
    # the claim hands out the keys of this run's work only: its datasets, its checkpoint
    keys = {
        unquote(urlsplit(item["url"]).path).split("/", 2)[2]
        for item in claim.json()["downloads"].values()
        if "X-Amz-Signature" in item["url"]
    }
    assert keys == {blobs.blob_key(upload["sha256"])}
    for name, item in claim.json()["downloads"].items():
        if name != "checkpoint":  # a buyer's file: this server's signed URL, for this lease
            grant = blobs.grant_check(
                parse_qs(urlsplit(item["url"]).query)["token"][0], method="GET"
            )
            assert grant.lease_id == resumed.lease_id and grant.key.startswith("files/")


@pytest.mark.parametrize("wrong", ["same size, other bytes", "other size"])
def test_wrong_bytes_are_refused_at_the_commit_and_nothing_is_recorded(
    claimed, s3_blobs, tmp_path, wrong
):
    _a, _, job, _run, _agent, _claim = claimed
    body = _tar({"COMPLETE": b"1", "adapter_model.safetensors": b"weights"})
    upload = _declare(claimed, body)
    other = body[:-1] + b"!" if wrong == "same size, other bytes" else body + b"\0" * 512
    # A store that checks the signed checksum refuses this PUT itself (S3: BadDigest);
    # whether it does or not, the commit must.
    with contextlib.suppress(TransferError):
        _put(upload["url"], _file(tmp_path, other), headers=upload["headers"])

    refused = _commit(claimed, upload)

    assert refused.status_code == 409
    reason = refused.json()["error"]["details"]["reason"]
    assert reason == ("hash_mismatch" if wrong == "same size, other bytes" else "size_mismatch")
    row = AssignmentUpload.objects.get(pk=upload["id"])
    assert row.committed_at is None and row.location == ""
    assert _saved_steps(job.public_id) == []
    if reason == "hash_mismatch":  # bytes that are not their key's hash are not kept
        with pytest.raises(ClientError):
            s3_blobs.head_object(
                Bucket=blobs.blob_store().bucket, Key=blobs.blob_key(upload["sha256"])
            )  # type: ignore[attr-defined]
    # the right bytes through a fresh URL are then committed
    _put(upload["url"], _file(tmp_path, body), headers=upload["headers"])
    assert _commit(claimed, upload).status_code == 200
    assert _saved_steps(job.public_id) == [1]


def test_each_url_is_signed_for_one_method_one_key_and_the_ttl(claimed, settings):
    _a, _b, _job, run, _agent, _claim = claimed
    settings.ASSIGNMENT_URL_TTL_SECONDS = 120
    store = blobs.blob_store()
    key = blobs.blob_key("ab" * 32)
    put = store.url(
        blobs.Grant(lease_id=run.lease_id, key=key, method="PUT", sha256="ab" * 32, size=1),
        base_url="http://testserver",
    )
    get = store.url(blobs.Grant(lease_id=run.lease_id, key=key, method="GET"), base_url="")
    other = store.url(
        blobs.Grant(lease_id=run.lease_id, key=blobs.blob_key("cd" * 32), method="GET"),
        base_url="",
    )

    for url in (put, get, other):
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["120"]
    signatures = {parse_qs(urlsplit(url).query)["X-Amz-Signature"][0] for url in (put, get, other)}
    assert len(signatures) == 3  # the method and the key are in what is signed
    assert "x-amz-checksum-sha256" in parse_qs(urlsplit(put).query)["X-Amz-SignedHeaders"][0]
    assert "x-amz-checksum-sha256" not in parse_qs(urlsplit(get).query)["X-Amz-SignedHeaders"][0]
    with pytest.raises(Exception, match="not a file or an upload"):
        store.url(
            blobs.Grant(lease_id=run.lease_id, key="../etc/passwd", method="GET"), base_url=""
        )


def test_the_store_writes_only_the_declared_bytes(s3_blobs):
    store = blobs.blob_store()
    body = b"checkpoint bytes"
    sha256 = hashlib.sha256(body).hexdigest()
    key = blobs.blob_key(sha256)

    with pytest.raises(blobs.BlobMismatch):
        store.write(key, [body[:-1], b"?"], sha256=sha256, size=len(body))
    assert store.head(key) is None
    with pytest.raises(blobs.BlobMismatch):
        store.write(key, [body, b"more"], sha256=sha256, size=len(body))
    assert store.head(key) is None
    store.write(key, [body[:5], body[5:]], sha256=sha256, size=len(body))

    assert store.head(key) == blobs.BlobHead(size=len(body), sha256=sha256)
    assert b"".join(store.open(key)) == body
    assert store.local_path(key).read_bytes() == body
