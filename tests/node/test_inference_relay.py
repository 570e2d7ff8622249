"""Inference on the leased node through the relay, with real processes: the node's
agent (``python -m providers.agent``) claims the deployment's serve assignment, runs
the engine (``python -m runtime.serve``) as its subprocess, takes the deployment's
requests over HTTP and posts the chunks back; the gateway streams them to the
client and bills what it counted itself."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from marketplace.assignments.models import Assignment, AssignmentLogLine
from marketplace.workloads.models import Deployment
from metering.models import UsageEvent
from tests.marketplace.conftest import offer
from tests.node.conftest import AgentNode, agent_client, agent_node, wait_for
from tests.workloads.conftest import openai_client
from tests.workloads.market import platform_running

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"
ASK = [{"role": "user", "content": "Count from one to ten, please."}]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def _dirs(settings, model_root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from runtime.registry import tiny_model_ensure

    settings.RUNTIME_MODEL_DIR = model_root
    settings.ASSIGNMENT_BLOB_DIR = tmp_path / "blobs"
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"
    settings.INFERENCE_START_TIMEOUT_SECONDS = 5
    tiny_model_ensure()


def _agent_env(model_root: Path) -> dict[str, str]:
    return {"TANDEM_MODEL_DIR": str(model_root), "OMP_NUM_THREADS": "1"}


def serving_node(cast: Any, start_agent: Any, model_root: Path, name: str) -> tuple[AgentNode, Any]:
    node = agent_node(cast.provider_a, name, f"{cast.provider_a.pk}-{name}")
    offer(node.node, count=2)
    return node, start_agent(node, env=_agent_env(model_root))


def until_served(client: Any, **request: Any) -> Any:
    """The first request for the cold model: 503 (with Retry-After) until the node's
    engine has loaded; then the answer."""
    import openai

    deadline = time.monotonic() + 180
    while True:
        try:
            return client.chat.completions.create(model=TINY, **request)
        except openai.InternalServerError as exc:
            assert exc.status_code == 503, exc
            assert time.monotonic() < deadline, "the node's engine did not start"
            time.sleep(0.5)


def tokenizer() -> Any:
    from runtime.datasets import tokenizer_for

    return tokenizer_for(TINY)


def usage_of(request_id: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for event in UsageEvent.objects.filter(event_id__startswith=f"{request_id}:"):
        found.setdefault(event.type, []).append(event.quantity)
    return found


def serve_assignment() -> Assignment:
    return Assignment.objects.filter(kind=Assignment.Kind.SERVE).order_by("-pk").first()


def test_streamed_chunks_joined_equal_the_non_streamed_text_and_usage_is_billed_once_by_the_gateway(
    cast, live_server, start_agent, model_root
):
    # given: a node whose agent serves the tiny model's deployment
    serving_node(cast, start_agent, model_root, "serve-a")
    client = openai_client(live_server, cast.client(cast.buyer_a).raw_key)
    with platform_running():
        until_served(client, messages=ASK, max_tokens=4)
        # when: the same greedy request, whole and streamed
        whole = client.chat.completions.create(
            model=TINY, messages=ASK, max_tokens=40, temperature=0
        )
        pieces, stream_id = [], None
        for chunk in client.chat.completions.create(
            model=TINY, messages=ASK, max_tokens=40, temperature=0, stream=True
        ):
            stream_id = chunk.id
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)

    # then: the streamed chunks joined are the text
    text = whole.choices[0].message.content
    assert text and "".join(pieces) == text
    # the engine ran on the node, in the agent's subprocess: its serve assignment ran
    assignment = serve_assignment()
    assert assignment.workload_id == Deployment.objects.get().public_id
    assert assignment.started_at is not None
    # and each request's usage was recorded once, from the gateway's own counts:
    # the prompt as the template renders it, the completion as the text received
    prompt = len(tokenizer().chat_prompt_ids(ASK))
    # (one more for the end when it stopped: the end token, or a stop string, sampled)
    stopped = whole.choices[0].finish_reason == "stop"
    completion = min(len(tokenizer().encode(text)) + stopped, 40)
    for request_id in (whole.id, stream_id):
        assert usage_of(request_id) == {
            "tokens.prompt": [prompt],
            "tokens.completion": [completion],
        }
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (prompt, completion)


def test_sixteen_concurrent_requests_are_batched_on_the_node(
    cast, live_server, start_agent, model_root
):
    serving_node(cast, start_agent, model_root, "serve-b")
    client = openai_client(live_server, cast.client(cast.buyer_a).raw_key)

    def one(index: int) -> None:
        answer = client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": f"Say something about {index}."}],
            max_tokens=48,
            temperature=1,
            seed=index,
        )
        assert answer.choices[0].finish_reason in ("stop", "length")

    with platform_running():
        until_served(client, messages=ASK, max_tokens=4)
        serial = []
        for index in range(3):
            started = time.monotonic()
            one(index)
            serial.append(time.monotonic() - started)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        together = time.monotonic() - started
        assignment = serve_assignment()
        # the engine's batch sizes, from its log on the node (reported by the agent)
        sizes = wait_for(
            lambda: [
                int(line.text.split()[2])
                for line in AssignmentLogLine.objects.filter(
                    assignment=assignment, text__startswith="engine batch:"
                )
                if int(line.text.split()[2]) > 1
            ],
            timeout=15,
        )

    assert max(sizes) > 1
    # sixteen at once take far less than sixteen one after another
    assert together < 16 * statistics.median(serial) / 2, (together, serial)


def test_a_node_killed_mid_stream_is_an_error_to_the_client_and_only_what_it_received_is_billed(
    cast, live_server, start_agent, model_root, settings
):
    import openai

    settings.ASSIGNMENT_CLAIM_TTL_SECONDS = 3
    _, agent = serving_node(cast, start_agent, model_root, "serve-c")
    client = openai_client(live_server, cast.client(cast.buyer_a).raw_key)
    received: list[str] = []
    stream_id = None
    with platform_running():
        until_served(client, messages=ASK, max_tokens=4)
        stream = client.chat.completions.create(
            model=TINY, messages=ASK, max_tokens=400, temperature=1, seed=1, stream=True
        )
        # when: the node dies (the agent and its engine, SIGKILL) after the first text
        with pytest.raises(openai.APIError) as raised:
            for chunk in stream:
                stream_id = chunk.id
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                    if agent.process.poll() is None:
                        os.killpg(agent.process.pid, signal.SIGKILL)
    # then: the client got an error in the stream, not a clean end
    assert "node" in str(raised.value).lower() or "stopped" in str(raised.value).lower()
    assert received
    # and was billed for the tokens it received, once
    text = "".join(received)
    usage = usage_of(stream_id)
    assert usage["tokens.prompt"] == [len(tokenizer().chat_prompt_ids(ASK))]
    assert usage.get("tokens.completion", [0]) == [len(tokenizer().encode(text))]
    assert len(tokenizer().encode(text)) < 400


@pytest.fixture(params=["redis", "database"])
def relay_kind(request, settings) -> str:  # type: ignore[no-untyped-def]
    settings.INFERENCE_RELAY = request.param
    return str(request.param)


def test_the_relay_endpoints_refuse_another_nodes_key_and_a_stale_attempt_and_change_nothing(
    cast, relay_kind
):
    from core.followers import followers_run_until_idle
    from marketplace.assignments import services as assignments
    from marketplace.services import matching_round
    from marketplace.workloads import inference
    from marketplace.workloads.followers import WorkloadsFollower
    from marketplace.workloads.relay import relay

    # given: the deployment's serve assignment on node A, claimed (attempt 1), and one
    # request waiting on its queue
    a = agent_node(cast.provider_a, "relay-a", f"{cast.provider_a.pk}-ra")
    b = agent_node(cast.provider_a, "relay-b", f"{cast.provider_a.pk}-rb")
    offer(a.node, count=2)
    served = inference.model_resolve(organization=cast.buyer_a, name=TINY)
    deployment = inference.deployment_live(organization=cast.buyer_a, served=served)
    matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    assignment = Assignment.objects.get(kind=Assignment.Kind.SERVE)
    assert assignment.node_id == a.node.pk
    claim = assignments.assignment_claim(node_id=a.node.pk, assignment_id=assignment.pk)
    assert claim.assignment.attempt == 1
    queues = relay()
    queues.submit(
        deployment_id=deployment.public_id,
        request_id="req-1",
        payload={"id": "req-1", "kind": "generate", "request": {"prompt": "hi"}},
    )
    node_a, node_b = agent_client(a.key), agent_client(b.key)
    base_a = f"/api/v1/agent/nodes/{a.node.pk}/serve/{assignment.pk}"
    base_b = f"/api/v1/agent/nodes/{b.node.pk}/serve/{assignment.pk}"
    take = {"attempt": 1, "max": 16, "wait": 0}
    reply = {"attempt": 1, "replies": [{"request": "req-1", "text": "x", "finish_reason": None}]}

    # when / then: node B's key on node A's path, or on its own path for A's assignment
    for client, base in ((node_b, base_a), (node_b, base_b)):
        assert client.post(f"{base}/requests", take, format="json").status_code == 404
        assert client.post(f"{base}/replies", reply, format="json").status_code == 404
    # a stale attempt: 409, nothing taken or stored
    stale_take = {**take, "attempt": 2}
    stale_reply = {**reply, "attempt": 2}
    answer = node_a.post(f"{base_a}/requests", stale_take, format="json")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "stale_attempt"
    answer = node_a.post(f"{base_a}/replies", stale_reply, format="json")
    assert answer.status_code == 409
    assert queues.replies(deployment_id=deployment.public_id, request_id="req-1", wait=0) == []
    # the request still waits: the current attempt takes it, once
    answer = node_a.post(f"{base_a}/requests", take, format="json")
    assert answer.status_code == 200, answer.json()
    assert [item["id"] for item in answer.json()["requests"]] == ["req-1"]
    again = node_a.post(f"{base_a}/requests", take, format="json")
    assert again.json()["requests"] == []
    # and its reply reaches the gateway; one to a request nobody waits for is gone
    answer = node_a.post(
        f"{base_a}/replies",
        {"attempt": 1, "replies": [*reply["replies"], {"request": "req-x", "text": "y"}]},
        format="json",
    )
    assert answer.status_code == 200 and answer.json()["gone"] == ["req-x"]
    got = queues.replies(deployment_id=deployment.public_id, request_id="req-1", wait=0)
    assert [item["text"] for item in got] == ["x"]
    queues.forget(deployment_id=deployment.public_id, request_id="req-1")


def test_concurrent_takers_never_take_one_request_twice(relay_kind):
    from marketplace.workloads.relay import relay

    queues = relay()
    deployment_id = f"dep-take-{relay_kind}"
    ids = [f"req-{relay_kind}-{n}" for n in range(120)]
    for request_id in ids:
        queues.submit(
            deployment_id=deployment_id, request_id=request_id, payload={"id": request_id}
        )
    taken: list[str] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def taker() -> None:
        from django.db import connection

        try:
            while batch := queues.take(deployment_id=deployment_id, limit=7, wait=0.2):
                with lock:
                    taken.extend(item["id"] for item in batch)
        except BaseException as exc:  # surfaced below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert sorted(taken) == sorted(ids)  # every request once, none twice
    for request_id in ids:
        queues.forget(deployment_id=deployment_id, request_id=request_id)


def test_a_serve_assignment_no_agent_claims_fails_its_lease_and_stops_the_deployment(cast):
    from datetime import timedelta

    from core.followers import followers_run_until_idle
    from marketplace.assignments import services as assignments
    from marketplace.models import Lease
    from marketplace.services import matching_round
    from marketplace.workloads import inference
    from marketplace.workloads.followers import WorkloadsFollower

    # given: a deployment leased on a node whose agent never comes
    a = agent_node(cast.provider_a, "silent-a", f"{cast.provider_a.pk}-sa")
    offer(a.node, count=2)
    served = inference.model_resolve(organization=cast.buyer_a, name=TINY)
    deployment = inference.deployment_live(organization=cast.buyer_a, served=served)
    matching_round()
    followers_run_until_idle([WorkloadsFollower()])
    queued = Assignment.objects.get(kind=Assignment.Kind.SERVE)
    ttl = assignments.claim_ttl()

    # when: the reaper passes before, then after two claim TTLs
    assert assignments.assignments_reap(now=queued.created_at + ttl) == 0
    assert assignments.assignments_reap(now=queued.created_at + 2 * ttl + timedelta(seconds=1))
    followers_run_until_idle([WorkloadsFollower()])

    # then: the lease failed, the node is unhealthy, the deployment stopped
    queued.refresh_from_db()
    deployment.refresh_from_db()
    assert queued.state == Assignment.State.FAILED
    assert Lease.objects.get(pk=int(deployment.lease_ref)).state == Lease.State.FAILED
    assert deployment.status == Deployment.Status.STOPPED
    a.node.refresh_from_db()
    assert a.node.health != "healthy"


def test_the_agent_joins_a_requests_chunks_gathered_while_a_post_was_out():
    from providers.agent_serve import coalesce

    gathered = [
        {"request": "a", "accepted": True},
        {"request": "a", "text": "x", "finish_reason": None},
        {"request": "b", "text": "1", "finish_reason": None},
        {"request": "a", "text": "y", "finish_reason": None},
        {"request": "a", "text": "z", "finish_reason": "stop"},
        {"request": "b", "error": {"status": 500, "code": "generation_failed"}},
        {"request": "c", "text": "", "finish_reason": None},
    ]
    assert coalesce(gathered) == [
        {"request": "a", "accepted": True},
        {"request": "a", "text": "xyz", "finish_reason": "stop"},
        {"request": "b", "text": "1", "finish_reason": None},
        {"request": "b", "error": {"status": 500, "code": "generation_failed"}},
        {"request": "c", "text": "", "finish_reason": None},
    ]


def test_the_agent_joins_the_sampled_tokens_of_the_chunks_it_joins():
    from providers.agent_serve import coalesce

    one = {"id": 7, "text": "x", "logprob": -0.5, "special": False}
    two = {"id": 8, "text": "y", "logprob": -1.5, "special": False}
    end = {"id": 2, "text": "</s>", "logprob": -0.25, "special": True}
    gathered = [
        {"request": "a", "text": "x", "finish_reason": None, "tokens": [one]},
        {"request": "a", "text": "", "finish_reason": None, "tokens": [two]},
        {"request": "a", "text": "y", "finish_reason": "stop", "tokens": [end]},
    ]
    assert coalesce(gathered) == [
        {"request": "a", "text": "xy", "finish_reason": "stop", "tokens": [one, two, end]}
    ]
