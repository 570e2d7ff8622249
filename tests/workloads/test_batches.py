"""/v1/batches at the API: every line of the input file checked as its online route
checks it (a bad line is a 400 naming the line and the field), tenancy on every
route, listing by cursor, cancelling, the batch discount in the price book, and the
runner's claims surviving a runner that died."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from marketplace.workloads import batch_runner, batches
from marketplace.workloads.models import Batch, BatchRequest
from pricing.book import batch_rate, rate_for

pytestmark = pytest.mark.django_db

TINY = "tandem/tiny-llama"


def request_line(n: int, **change: Any) -> dict[str, Any]:
    line = {
        "custom_id": f"r-{n}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": TINY, "messages": [{"role": "user", "content": f"Hi {n}"}]},
    }
    return {**line, **change}


def upload(client, lines: list[Any], purpose: str = "batch") -> str:  # type: ignore[no-untyped-def]
    content = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    answer = client.post(
        "/v1/files",
        {"purpose": purpose, "file": SimpleUploadedFile("in.jsonl", content.encode())},
        format="multipart",
    )
    assert answer.status_code == 200, answer.content
    return str(answer.json()["id"])


def create(client, file_id: str, **change: Any):  # type: ignore[no-untyped-def]
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    return client.generic("POST", "/v1/batches", json.dumps({**body, **change}), "application/json")


def test_a_batch_is_created_in_progress_with_a_request_per_line(cast):
    buyer = cast.client(cast.buyer_a)
    file_id = upload(buyer, [request_line(n) for n in range(3)])

    answer = create(buyer, file_id, metadata={"team": "eval"})

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["object"] == "batch" and body["status"] == "in_progress"
    assert body["endpoint"] == "/v1/chat/completions" and body["completion_window"] == "24h"
    assert body["input_file_id"] == file_id and body["model"] == TINY
    assert body["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert body["expires_at"] - body["created_at"] == 24 * 3600
    assert body["metadata"] == {"team": "eval"}
    rows = BatchRequest.objects.filter(batch__public_id=body["id"]).order_by("line")
    assert [(r.line, r.custom_id, r.state) for r in rows] == [
        (1, "r-0", "pending"),
        (2, "r-1", "pending"),
        (3, "r-2", "pending"),
    ]


BAD_LINES = [
    ("not json", 2, "line"),
    (request_line(1, method="GET"), 2, "method"),
    (request_line(1, url="/v1/embeddings"), 2, "url"),
    (request_line(0), 2, "custom_id"),  # the first line's id again
    (request_line(1, body={"model": TINY, "messages": []}), 2, "body.messages"),
    (
        request_line(1, body={"model": TINY, "messages": [{"role": "wizard", "content": "x"}]}),
        2,
        "body.messages[0].role",
    ),
    (request_line(1, body={"model": TINY, "messages": [], "stream": True}), 2, "body.stream"),
    (
        request_line(
            1, body={"model": "other/model", "messages": [{"role": "user", "content": "x"}]}
        ),
        2,
        "body.model",
    ),
    (request_line(1, extra=1), 2, "extra"),
]


@pytest.mark.parametrize(("bad", "line", "param"), BAD_LINES)
def test_a_bad_line_is_a_400_naming_the_line_and_field(cast, bad, line, param):
    buyer = cast.client(cast.buyer_a)
    file_id = upload(buyer, [request_line(0), bad, request_line(2)])

    answer = create(buyer, file_id)

    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert error["message"].startswith(f"input file line {line}:"), error
    assert error["details"]["line"] == line
    assert not Batch.objects.exists()


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"endpoint": "/v1/responses"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 3600}}, None),
        ({"metadata": {"k": 5}}, "metadata.k"),
        ({"priority": "high"}, "priority"),
    ],
)
def test_batch_fields_are_checked(cast, change, param):
    buyer = cast.client(cast.buyer_a)
    file_id = upload(buyer, [request_line(0)])

    answer = create(buyer, file_id, **change)

    assert answer.status_code == 400, answer.content
    assert answer.json()["error"]["param"] == (param or next(iter(change)))


def test_the_input_file_must_be_a_batch_file_of_the_caller(cast, chat_bytes):
    buyer = cast.client(cast.buyer_a)
    other = cast.client(cast.buyer_b)
    theirs = upload(other, [request_line(0)])
    training = buyer.post(
        "/v1/files",
        {"purpose": "fine-tune", "file": SimpleUploadedFile("t.jsonl", chat_bytes)},
        format="multipart",
    ).json()["id"]

    assert create(buyer, theirs).status_code == 404
    assert create(buyer, theirs).json()["error"]["param"] == "input_file_id"
    wrong_purpose = create(buyer, training)
    assert wrong_purpose.status_code == 400
    assert wrong_purpose.json()["error"]["param"] == "input_file_id"


def test_another_organizations_batch_is_not_found_on_every_route(cast):
    owner = cast.client(cast.buyer_a)
    batch_id = create(owner, upload(owner, [request_line(0)])).json()["id"]
    stranger = cast.client(cast.buyer_b)

    assert stranger.get(f"/v1/batches/{batch_id}").status_code == 404
    assert stranger.post(f"/v1/batches/{batch_id}/cancel").status_code == 404
    assert stranger.get("/v1/batches").json()["data"] == []
    assert stranger.get(f"/v1/batches?after={batch_id}").status_code == 400
    assert create(stranger, Batch.objects.get().input_file.public_id).status_code == 404
    assert cast.anonymous.get(f"/v1/batches/{batch_id}").status_code == 401
    # the owner still has it, untouched
    assert owner.get(f"/v1/batches/{batch_id}").json()["status"] == "in_progress"


def test_batches_are_listed_newest_first_by_cursor(cast):
    buyer = cast.client(cast.buyer_a)
    file_id = upload(buyer, [request_line(0)])
    made = [create(buyer, file_id).json()["id"] for _ in range(3)]

    first = buyer.get("/v1/batches?limit=2").json()
    rest = buyer.get(f"/v1/batches?limit=2&after={first['last_id']}").json()

    assert [b["id"] for b in first["data"]] == made[::-1][:2] and first["has_more"] is True
    assert [b["id"] for b in rest["data"]] == made[:1] and rest["has_more"] is False


def test_cancel_stops_pending_requests_and_finalizes_with_an_error_file(cast):
    buyer = cast.client(cast.buyer_a)
    batch_id = create(buyer, upload(buyer, [request_line(n) for n in range(3)])).json()["id"]
    # one request already ran (as a runner would have recorded it)
    done = BatchRequest.objects.get(batch__public_id=batch_id, line=1)
    done.state, done.status_code = "completed", 200
    done.response = json.dumps({"status_code": 200, "request_id": "x", "body": {"id": "c-1"}})
    done.save()

    cancelling = buyer.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelling.status_code == 200 and cancelling.json()["status"] == "cancelling"
    assert batch_runner.batch_run(batch_id=batch_id) is None  # the runner finalizes it

    cancelled = buyer.get(f"/v1/batches/{batch_id}").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
    assert cancelled["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    output = buyer.get(f"/v1/files/{cancelled['output_file_id']}/content")
    lines = [json.loads(x) for x in b"".join(output.streaming_content).splitlines()]
    assert [(x["custom_id"], x["response"]["status_code"]) for x in lines] == [("r-0", 200)]
    errors = buyer.get(f"/v1/files/{cancelled['error_file_id']}/content")
    lines = [json.loads(x) for x in b"".join(errors.streaming_content).splitlines()]
    assert [(x["custom_id"], x["error"]["code"]) for x in lines] == [
        ("r-1", "batch_cancelled"),
        ("r-2", "batch_cancelled"),
    ]
    # a finished batch cannot be cancelled again into another state
    again = buyer.post(f"/v1/batches/{batch_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_claim_whose_runner_died_is_taken_again(cast):
    buyer = cast.client(cast.buyer_a)
    batch_id = create(buyer, upload(buyer, [request_line(n) for n in range(2)])).json()["id"]
    batch = Batch.objects.get(public_id=batch_id)
    # a runner claimed the batch and a request, then its process died
    assert batch_runner._claim_runner(batch, "dead")
    claimed = batch_runner._request_claim(batch, "dead")
    assert claimed is not None and claimed.state == "running"
    assert batches.batches_tick() == 0  # its claim has not run out: no second runner

    # ... and its deadlines ran out
    gone = timezone.now() - timedelta(seconds=1)
    Batch.objects.filter(pk=batch.pk).update(runner_until=gone)
    BatchRequest.objects.filter(pk=claimed.pk).update(claimed_until=gone)

    assert batches.batches_tick() == 1  # a new runner for it
    assert batch_runner._claim_runner(batch, "next")
    assert batch_runner._requests_reclaim(batch) == 1
    assert BatchRequest.objects.filter(batch=batch, state="pending").count() == 2
    assert not batch_runner._claim_runner(batch, "dead")  # the old runner lost it


def test_the_price_book_discounts_batch_tokens_per_tier():
    at = timezone.now()
    online = rate_for("tokens.completion", {"model": TINY}, at)
    batch = rate_for("tokens.completion", {"model": TINY, "service_tier": "batch"}, at)

    assert batch.rate_micros == batch_rate(online.rate_micros, 5_000) == online.rate_micros // 2
    assert batch.unit == online.unit
    assert batch_rate(333, 5_000) == 166 and batch_rate(335, 5_000) == 168  # half-even
    assert batch_rate(1_000, 10_000) == 0 and batch_rate(1_000, 0) == 1_000
