"""The buyer's runs API: who may use it, which leases take runs, the bounds on a
command, idempotent creation, cancelling, and the log cursor."""

from __future__ import annotations

import pytest

from marketplace import services as market
from marketplace.assignments.models import Assignment, AssignmentLogLine
from marketplace.models import Lease

pytestmark = pytest.mark.django_db(transaction=True)


def _post(client, url, body, key="k1"):
    return client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_runs_are_the_buyers_own_and_need_the_operator_role(world):
    url = world.runs_url()
    body = {"command": ["true"]}
    # another buyer: 404 for the lease, its list and its runs
    assert _post(world.other_buyer, url, body).status_code == 404
    assert world.other_buyer.get(url).status_code == 404
    created = _post(world.buyer, url, body)
    assert created.status_code == 201, created.content
    run_id = created.json()["id"]
    for path in (f"{url}/{run_id}", f"{url}/{run_id}/logs"):
        assert world.other_buyer.get(path).status_code == 404
    assert world.other_buyer.post(f"{url}/{run_id}/cancel").status_code == 404
    # finance staff of the buyer read, not run; a provider is not a buyer
    finance = world.cast.client(world.cast.buyer_a, role="finance")
    assert _post(finance, url, body, key="f").status_code == 403
    assert finance.get(url).status_code == 200
    provider = world.cast.client(world.cast.provider_a)
    assert _post(provider, url, body, key="p").status_code == 403
    # the key is required, and replays the first answer
    assert world.buyer.post(url, body, format="json").status_code == 400
    replay = _post(world.buyer, url, body)
    assert replay.status_code == 201 and replay.json()["id"] == run_id
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert Assignment.objects.filter(lease=world.lease).count() == 1
    listed = world.buyer.get(url).json()
    assert [run["id"] for run in listed["results"]] == [run_id]


def test_only_active_raw_leases_take_runs(world):
    Lease.objects.filter(pk=world.lease.pk).update(managed=True)
    answer = _post(world.buyer, world.runs_url(), {"command": ["true"]})
    assert answer.status_code == 409 and answer.json()["error"]["details"]["reason"] == "not_raw"
    Lease.objects.filter(pk=world.lease.pk).update(managed=False)
    market.order_cancel(order=world.order)
    answer = _post(world.buyer, world.runs_url(), {"command": ["true"]}, key="k2")
    assert answer.status_code == 409
    assert answer.json()["error"]["details"]["reason"] == "lease_ended"
    assert (
        _post(world.buyer, world.runs_url(999_999), {"command": ["true"]}, key="k3").status_code
        == 404
    )
    assert Assignment.objects.count() == 0


BAD_COMMANDS = [
    ({"command": []}, "command"),
    ({"command": "echo hi"}, "command"),
    ({"command": [""]}, "command[0]"),
    ({"command": ["x" * 5000]}, "command"),
    ({"command": ["a\x00b"]}, "command"),
    ({"command": ["true"], "env": {"CUDA_VISIBLE_DEVICES": "0"}}, "env.CUDA_VISIBLE_DEVICES"),
    ({"command": ["true"], "env": {"1BAD": "x"}}, "env.1BAD"),
    ({"command": ["true"], "env": {"A": 5}}, "env"),
    ({"command": ["true"], "files": {"../etc/passwd": "x"}}, "files.../etc/passwd"),
    ({"command": ["true"], "files": {"a/b": "x"}}, "files.a/b"),
    ({"command": ["true"], "files": {f"f{i}": "x" for i in range(17)}}, "files"),
    ({"command": ["true"], "files": {"big": "x" * (256 * 1024 + 1)}}, "files"),
]


def test_bad_commands_are_400s_that_say_where(world):
    for number, (body, where) in enumerate(BAD_COMMANDS):
        answer = _post(world.buyer, world.runs_url(), body, key=f"bad-{number}")
        assert answer.status_code == 400, (body, answer.content)
        assert answer.json()["error"]["message"].startswith(where), answer.json()
    assert Assignment.objects.count() == 0


def test_a_queued_run_is_cancelled_at_once_and_a_second_cancel_is_409(world):
    run = _post(world.buyer, world.runs_url(), {"command": ["true"]}).json()
    url = f"{world.runs_url()}/{run['id']}"
    cancelled = world.buyer.post(f"{url}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert world.buyer.post(f"{url}/cancel").status_code == 409
    assert world.buyer.get(url).json()["state"] == "cancelled"


def test_the_log_cursor_pages_in_order(world):
    run = Assignment.objects.get(
        pk=_post(world.buyer, world.runs_url(), {"command": ["true"]}).json()["id"]
    )
    AssignmentLogLine.objects.bulk_create(
        AssignmentLogLine(
            assignment=run,
            seq=seq,
            attempt=1,
            stream="stdout",
            text=f"line {seq}",
            received_at=run.created_at,
        )
        for seq in range(1, 6)
    )
    Assignment.objects.filter(pk=run.pk).update(log_lines=5)
    url = f"{world.runs_url()}/{run.pk}/logs"
    page = world.buyer.get(f"{url}?after=0&limit=2").json()
    assert [line["text"] for line in page["lines"]] == ["line 1", "line 2"]
    assert page["next_after"] == 2 and page["complete"] is False
    page = world.buyer.get(f"{url}?after={page['next_after']}").json()
    assert [line["seq"] for line in page["lines"]] == [3, 4, 5]
    assert world.buyer.get(f"{url}?after=-1").status_code == 400
    assert world.buyer.get(f"{url}?limit=0").status_code == 400
