"""Files on /v1/: OpenAI's multipart upload and Together's announce / PUT /
preprocess flow, validation by the runtime's dataset checks, tenancy."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.workloads.models import File

pytestmark = pytest.mark.django_db


def upload(client, content: bytes, name: str = "train.jsonl", purpose: str = "fine-tune"):
    return client.post(
        "/v1/files",
        {"purpose": purpose, "file": SimpleUploadedFile(name, content)},
        format="multipart",
    )


def test_openai_upload_is_checked_and_listed(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)

    response = upload(buyer, chat_bytes)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "file"
    assert body["id"].startswith("file-")
    assert body["bytes"] == len(chat_bytes)
    assert body["status"] == "processed"
    assert body["processing_status"] == "COMPLETED"
    assert body["validation_report"]["valid"] is True
    assert body["validation_report"]["nlines"] == 8
    listed = buyer.get("/v1/files").json()
    assert [f["id"] for f in listed["data"]] == [body["id"]]
    content = buyer.get(f"/v1/files/{body['id']}/content")
    assert b"".join(content.streaming_content) == chat_bytes


def test_content_answers_the_clients_binary_accept_headers(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    file_id = upload(buyer, chat_bytes).json()["id"]

    # what the openai and together clients send, and a browser
    for accept in ("application/binary", "application/octet-stream", "*/*"):
        response = buyer.get(f"/v1/files/{file_id}/content", HTTP_ACCEPT=accept)
        assert response.status_code == 200, accept
        assert b"".join(response.streaming_content) == chat_bytes
    # an error is still the JSON error shape
    missing = buyer.get("/v1/files/file-missing/content", HTTP_ACCEPT="application/binary")
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/json"
    assert missing.json()["error"]["code"] == "file_not_found"


def test_invalid_dataset_keeps_the_line_numbered_reason(cast, invalid_bytes):
    buyer = cast.client(cast.buyer_a)

    body = upload(buyer, invalid_bytes).json()

    assert body["status"] == "error"
    assert body["status_details"].startswith("line 3:")
    assert body["validation_report"]["valid"] is False
    assert body["validation_report"]["error"].startswith("line 3:")


def test_together_flow_announce_put_preprocess(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    checksum = hashlib.sha256(chat_bytes).hexdigest()

    announced = buyer.post(
        "/v1/files",
        {
            "purpose": "fine-tune",
            "file_name": "train.jsonl",
            "file_type": "jsonl",
            "checksum": checksum,
        },
        format="multipart",
    )
    assert announced.status_code == 302
    file_id = announced["X-Together-File-Id"]
    location = urlsplit(announced["Location"])
    # the PUT carries no API key: the signed URL is the authority
    put = cast.anonymous.generic(
        "PUT", f"{location.path}?{location.query}", chat_bytes, "application/octet-stream"
    )
    assert put.status_code == 200, put.content
    processed = buyer.post(f"/v1/files/{file_id}/preprocess")

    assert processed.status_code == 200
    assert processed.json()["processing_status"] == "COMPLETED"
    assert File.objects.get(public_id=file_id).bytes == len(chat_bytes)
    # the same content again: a 409 naming the existing file, as Together answers
    again = buyer.post(
        "/v1/files",
        {
            "purpose": "fine-tune",
            "file_name": "x.jsonl",
            "file_type": "jsonl",
            "checksum": checksum,
        },
        format="multipart",
    )
    assert again.status_code == 409
    assert again.json()["file_id"] == file_id


def test_together_put_with_wrong_checksum_is_refused(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    announced = buyer.post(
        "/v1/files",
        {
            "purpose": "fine-tune",
            "file_name": "train.jsonl",
            "file_type": "jsonl",
            "checksum": "0" * 64,
        },
        format="multipart",
    )
    location = urlsplit(announced["Location"])

    put = cast.anonymous.generic("PUT", f"{location.path}?{location.query}", chat_bytes)

    assert put.status_code == 400
    error = put.json()["error"]
    assert error["param"] == "checksum"
    assert error["code"] == "checksum_mismatch"
    assert File.objects.get(public_id=announced["X-Together-File-Id"]).status == "awaiting_bytes"


def test_upload_url_is_not_usable_for_another_file_or_without_its_signature(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    checksum = hashlib.sha256(chat_bytes).hexdigest()
    first = buyer.post(
        "/v1/files",
        {
            "purpose": "fine-tune",
            "file_name": "a.jsonl",
            "file_type": "jsonl",
            "checksum": checksum,
        },
        format="multipart",
    )
    other_id = File.objects.create(
        public_id="file-other",
        organization=cast.buyer_b,
        purpose="fine-tune",
        filename="b.jsonl",
        checksum=checksum,
        storage_key=f"{cast.buyer_b.pk}/file-other",
        status="awaiting_bytes",
    ).public_id
    token = urlsplit(first["Location"]).query

    assert (
        cast.anonymous.generic(
            "PUT", f"/v1/files/{other_id}/upload?{token}", chat_bytes
        ).status_code
        == 404
    )
    assert (
        cast.anonymous.generic(
            "PUT", f"/v1/files/{first['X-Together-File-Id']}/upload?token=forged", chat_bytes
        ).status_code
        == 404
    )


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"purpose": "nonsense"}, "purpose"),
        ({"purpose": "fine-tune"}, "file"),
        ({"purpose": "fine-tune", "file_name": "a.jsonl", "checksum": "xyz"}, "checksum"),
        ({"purpose": "fine-tune", "file_name": "a.exe", "checksum": "0" * 64}, "file_name"),
    ],
)
def test_bad_upload_names_the_field(cast, data, param):
    response = cast.client(cast.buyer_a).post("/v1/files", data, format="multipart")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_another_orgs_file_is_not_found(cast, chat_bytes):
    owner = cast.client(cast.buyer_a)
    file_id = upload(owner, chat_bytes).json()["id"]
    intruder = cast.client(cast.buyer_b)

    for response in (
        intruder.get(f"/v1/files/{file_id}"),
        intruder.get(f"/v1/files/{file_id}/content"),
        intruder.delete(f"/v1/files/{file_id}"),
        intruder.post(f"/v1/files/{file_id}/preprocess"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "file_not_found"
    # /v1/ is for buyers' keys: a provider-only organization is refused outright
    assert cast.client(cast.provider_a).get(f"/v1/files/{file_id}").status_code == 403
    assert intruder.get("/v1/files").json()["data"] == []
    assert owner.get(f"/v1/files/{file_id}").status_code == 200


def test_anonymous_gets_401_in_openai_shape(cast):
    response = cast.anonymous.get("/v1/files")

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_delete_removes_the_file_and_its_bytes(cast, chat_bytes, _storage):
    buyer = cast.client(cast.buyer_a)
    file_id = upload(buyer, chat_bytes).json()["id"]
    key = File.objects.get(public_id=file_id).storage_key

    response = buyer.delete(f"/v1/files/{file_id}")

    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert buyer.get(f"/v1/files/{file_id}").status_code == 404
    assert not (_storage / key).exists()


def test_list_pages_with_after_and_limit(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    ids = [upload(buyer, chat_bytes, name=f"f{i}.jsonl").json()["id"] for i in range(3)]

    first = buyer.get("/v1/files?limit=2").json()
    second = buyer.get(f"/v1/files?limit=2&after={first['data'][-1]['id']}").json()

    assert [f["id"] for f in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    assert [f["id"] for f in second["data"]] == ids[:1]
    assert second["has_more"] is False
    assert buyer.get("/v1/files?limit=0").json()["error"]["param"] == "limit"
