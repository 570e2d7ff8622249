"""Datasets that break a JSON decoder: a line nested 50,000 levels deep (the decoder
recurses), a 5,000-digit integer (past Python's digit limit), a lone surrogate (which
no tokenizer reads). Each marks the file ``error`` with a reason naming the line,
whichever way it arrives: OpenAI's upload (checked in the request), Together's
announce / PUT / preprocess, and a file above the inline limit checked by a worker.
Never a 500, never a file left ``uploaded``."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.workloads import files as workload_files
from marketplace.workloads.models import File
from marketplace.workloads.tasks import file_check_task
from runtime.datasets import MAX_JSON_DEPTH

from .conftest import SAMPLE_CHAT, jsonl

pytestmark = pytest.mark.django_db

GOOD = jsonl(SAMPLE_CHAT[:2])
DEEP = b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n"
HUGE_INT = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": '
HUGE_INT += b'"Yo", "weight": ' + b"7" * 5_000 + b"}]}\n"
SURROGATE = b'{"prompt": "Hi", "completion": "x \\ud800 y"}\n'

CASES = {
    "deep": (DEEP, f"line 3: is nested deeper than {MAX_JSON_DEPTH} levels"),
    "huge-int": (HUGE_INT, "line 3: holds an integer of more than 4300 digits"),
    "surrogate": (
        jsonl([{"prompt": "a", "completion": "b"}] * 2) + SURROGATE,
        'line 3: "completion" is not valid Unicode (a lone surrogate at character 2)',
    ),
}


def _content(case: str) -> bytes:
    bad, _ = CASES[case]
    return bad if case == "surrogate" else GOOD + bad


@pytest.mark.parametrize("case", sorted(CASES))
def test_openai_upload_marks_the_file_error_naming_the_line(cast, case):
    buyer = cast.client(cast.buyer_a)

    answer = buyer.post(
        "/v1/files",
        {"purpose": "fine-tune", "file": SimpleUploadedFile("train.jsonl", _content(case))},
        format="multipart",
    )

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["status"] == "error"
    assert body["status_details"] == CASES[case][1]
    assert File.objects.get(public_id=body["id"]).status == File.Status.ERROR


@pytest.mark.parametrize("case", sorted(CASES))
def test_together_preprocess_refuses_it_naming_the_line(cast, case):
    buyer = cast.client(cast.buyer_a)
    content = _content(case)
    announced = buyer.post(
        "/v1/files",
        {
            "purpose": "fine-tune",
            "file_name": "train.jsonl",
            "file_type": "jsonl",
            "checksum": hashlib.sha256(content).hexdigest(),
        },
        format="json",
    )
    assert announced.status_code == 302, announced.content
    file_id = announced["X-Together-File-Id"]
    location = urlsplit(announced["Location"])
    put = cast.anonymous.generic(
        "PUT", f"{location.path}?{location.query}", content, "application/octet-stream"
    )
    assert put.status_code == 200, put.content

    processed = buyer.post(f"/v1/files/{file_id}/preprocess")

    assert processed.status_code == 400
    error = processed.json()["error"]
    assert error["code"] == "invalid_file_format"
    assert error["message"].endswith(CASES[case][1])
    file = File.objects.get(public_id=file_id)
    assert (file.status, file.error_message) == (File.Status.ERROR, CASES[case][1])
    # and asked again, the same answer from the recorded verdict
    assert buyer.post(f"/v1/files/{file_id}/preprocess").status_code == 400


@pytest.mark.parametrize("case", ["deep", "huge-int"])
def test_a_file_above_the_inline_limit_is_refused_by_the_worker(
    cast, case, django_capture_on_commit_callbacks
):
    # given a file past the 16 MiB checked within the request: three ~6 MiB lines
    # of text around the bad line
    filler = b'{"text": "' + b"a" * (4 * 1024**2 - 64) + b'"}\n'
    content = filler + filler + CASES[case][0] + filler + filler
    assert len(content) > workload_files.INLINE_CHECK_BYTES
    buyer = cast.client(cast.buyer_a)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        answer = buyer.post(
            "/v1/files",
            {"purpose": "fine-tune", "file": SimpleUploadedFile("big.jsonl", content)},
            format="multipart",
        )
    assert answer.status_code == 200, answer.content
    file_id = answer.json()["id"]
    assert answer.json()["status"] == "uploaded"  # the worker's to check
    assert len(callbacks) == 1

    # when the worker's actor runs
    file_check_task(file_id)

    # then the file is refused, naming the line
    file = File.objects.get(public_id=file_id)
    assert file.status == File.Status.ERROR
    assert file.error_message == CASES[case][1]
    assert buyer.get(f"/v1/files/{file_id}").json()["status"] == "error"


def test_a_check_that_fails_unexpectedly_refuses_the_file_rather_than_leaving_it(cast, monkeypatch):
    # given a dataset check that breaks on this file (a bug of ours)
    from marketplace.workloads import ports as external

    def broken(**_: object) -> None:
        raise MemoryError

    monkeypatch.setattr(external, "dataset_check", broken)
    buyer = cast.client(cast.buyer_a)

    body = buyer.post(
        "/v1/files",
        {"purpose": "fine-tune", "file": SimpleUploadedFile("train.jsonl", GOOD)},
        format="multipart",
    ).json()

    # then the file is in error with a reason, not stuck in uploaded
    assert body["status"] == "error"
    assert "could not be checked (MemoryError)" in body["status_details"]
