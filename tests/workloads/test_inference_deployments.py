"""Inference deployments on the market: the first request for a cold model places one
managed order and waits for its lease and its node's engine, concurrent first
requests share it, a model with no GPUs to be had is a 503 in time, an idle
deployment is stopped (its lease ended and settled, its engine stopped on the node)
and a lease that ends under a deployment stops it.

The node is a stand-in that speaks the node's protocol in this process (claims the
serve assignment, reports the engine started, takes requests from the relay and
answers "Five."), counting its engine loads; the real node (the agent and its engine
as processes) is exercised by tests/node/test_inference_relay.py and the official
clients' journeys (test_openai_client.py, test_together_client.py)."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from core.followers import followers_run_until_idle
from core.models import Event
from marketplace import services as market
from marketplace.models import Lease, Order
from marketplace.workloads import inference
from marketplace.workloads.followers import WorkloadsFollower
from marketplace.workloads.models import Deployment
from metering.models import UsageEvent
from tests.workloads.market import platform_running, provider_with_capacity
from tests.workloads.stand_in_node import StandInNode

pytestmark = pytest.mark.django_db(transaction=True)

TINY = "tandem/tiny-llama"
QUESTION = [{"role": "user", "content": "What is 2 plus 3?"}]


def _counts() -> tuple[int, int]:
    """The gateway's counts of a request and its answer, with the model's tokenizer."""
    from runtime.datasets import tokenizer_for

    tokenizer = tokenizer_for(TINY)
    # The answer stopped: its end token counts (one more than the text's tokens).
    return len(tokenizer.chat_prompt_ids(QUESTION)), len(tokenizer.encode("Five.")) + 1


@pytest.fixture
def engines(settings) -> Iterator[StandInNode]:  # type: ignore[no-untyped-def]
    settings.INFERENCE_START_TIMEOUT_SECONDS = 20
    node = StandInNode()
    node.start()
    yield node
    node.close()


def chat(client):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/chat/completions",
        {"model": TINY, "messages": QUESTION},
        format="json",
    )


def inference_orders():  # type: ignore[no-untyped-def]
    return Order.objects.filter(workload_kind=Order.Workload.INFERENCE).order_by("pk")


def test_the_first_request_places_one_order_and_serves_on_its_lease(cast, engines):
    provider_with_capacity(cast.provider_a)
    client = cast.client(cast.buyer_a)

    with platform_running():
        first = chat(client)
        second = chat(client)

    assert first.status_code == 200, first.json()
    assert second.status_code == 200, second.json()
    assert first.json()["choices"][0]["message"]["content"] == "Five."
    # one deployment, on one managed, open-ended, on-demand order, with its lease
    deployment = Deployment.objects.get()
    order = inference_orders().get()
    assert (order.workload_id, str(order.pk)) == (deployment.public_id, deployment.order_ref)
    assert order.kind == Order.Kind.ON_DEMAND and order.duration_seconds is None
    assert order.managed and order.reserved_micros == 0
    assert order.organization == cast.operator  # a base model's deployment is the platform's
    lease = Lease.objects.get(order=order)
    assert lease.state == Lease.State.ACTIVE and lease.managed
    assert deployment.lease_ref == str(lease.pk)
    assert deployment.status == Deployment.Status.READY
    # the engine loaded once, for the first request
    assert engines.loads == Counter({deployment.public_id: 1})
    # and each request's tokens are the buyer's usage of the deployment
    usage = UsageEvent.objects.filter(
        buyer=cast.buyer_a, subject_kind="deployment", subject_id=deployment.public_id
    )
    PROMPT_TOKENS, COMPLETION_TOKENS = _counts()
    assert sum(u.quantity for u in usage.filter(type="tokens.prompt")) == 2 * PROMPT_TOKENS
    assert sum(u.quantity for u in usage.filter(type="tokens.completion")) == 2 * COMPLETION_TOKENS
    assert second.json()["usage"]["completion_tokens"] == COMPLETION_TOKENS
    assert deployment.requests_served == 2


def test_concurrent_first_requests_share_one_deployment_order_and_load(cast, engines):
    provider_with_capacity(cast.provider_a)
    clients = [cast.client(cast.buyer_a) for _ in range(10)]
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def ask(client) -> None:  # type: ignore[no-untyped-def]
        try:
            start.wait()
            statuses.append(chat(client).status_code)
        finally:
            connection.close()

    with platform_running():
        threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert statuses == [200] * 10
    deployment = Deployment.objects.get()
    assert inference_orders().count() == 1
    assert Lease.objects.filter(order__workload_kind=Order.Workload.INFERENCE).count() == 1
    assert engines.loads == Counter({deployment.public_id: 1})
    assert Deployment.objects.get().requests_served == 10


def test_no_gpus_on_the_market_is_a_503_within_the_start_timeout(cast, engines, settings):
    settings.INFERENCE_START_TIMEOUT_SECONDS = 1
    client = cast.client(cast.buyer_a)

    began = time.monotonic()
    response = chat(client)
    waited = time.monotonic() - began

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_unavailable" and error["param"] == "model"
    assert "no GPUs were found" in error["message"] and TINY in error["message"]
    assert response["Retry-After"] == str(inference.RETRY_AFTER_SECONDS)
    assert 1 <= waited < 1 + 10  # it waited for the timeout, and not much longer
    # the deployment keeps waiting in the book; no engine was loaded without a lease
    deployment = Deployment.objects.get()
    assert deployment.status == Deployment.Status.STARTING and not deployment.lease_ref
    assert inference_orders().get().state == Order.State.OPEN
    assert not engines.loads

    # when GPUs come, the next request is served by that same deployment and order
    provider_with_capacity(cast.provider_a)
    settings.INFERENCE_START_TIMEOUT_SECONDS = 60
    with platform_running():
        assert chat(client).status_code == 200
    assert Deployment.objects.get().public_id == deployment.public_id
    assert inference_orders().count() == 1
    assert engines.loads == Counter({deployment.public_id: 1})


def test_a_deployment_nobody_asks_for_while_it_waits_is_stopped_and_its_order_cancelled(
    cast, engines, settings
):
    settings.INFERENCE_START_TIMEOUT_SECONDS = 1
    assert chat(cast.client(cast.buyer_a)).status_code == 503
    deployment = Deployment.objects.get()
    idle = timedelta(seconds=deployment.idle_timeout_seconds)

    assert inference.deployments_stop_idle(now=deployment.last_request_at + idle / 2) == 0
    assert inference.deployments_stop_idle(now=deployment.last_request_at + idle * 2) == 1

    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.STOPPED
    assert inference_orders().get().state == Order.State.CANCELLED


def test_an_idle_deployment_is_stopped_its_lease_settled_and_the_next_request_starts_anew(
    cast, engines
):
    provider_with_capacity(cast.provider_a)
    client = cast.client(cast.buyer_a)
    with platform_running():
        assert chat(client).status_code == 200
    deployment = Deployment.objects.get()
    lease = Lease.objects.get(pk=int(deployment.lease_ref))
    idle = timedelta(seconds=deployment.idle_timeout_seconds)
    assert deployment.last_request_at is not None

    # not yet idle for its whole timeout: kept warm
    assert inference.deployments_stop_idle(now=deployment.last_request_at + idle / 2) == 0
    # idle past it: stopped
    later = deployment.last_request_at + idle + timedelta(seconds=1)
    assert inference.deployments_stop_idle(now=later) == 1
    assert inference.deployments_stop_idle(now=later) == 0

    deployment.refresh_from_db()
    lease.refresh_from_db()
    assert deployment.status == Deployment.Status.STOPPED and deployment.stopped_at == later
    engines.settle()  # the node hears the stop at its next renewal
    assert engines.unloads == Counter({deployment.public_id: 1})
    # its lease ended then, and the provider's GPU-seconds up to then were settled
    assert lease.state == Lease.State.ENDED and lease.ended_at == later
    assert lease.gpu_seconds_billed >= idle.total_seconds() and lease.billed_micros > 0
    ended = Event.objects.get(stream_id=lease.stream_id, type="LeaseEnded")
    assert ended.payload["gpu_seconds"] == lease.gpu_seconds_billed
    assert ended.payload["provider_micros"] == lease.billed_micros
    assert inference_orders().get().state == Order.State.COMPLETED

    # the next request starts a new deployment, on a new order and lease
    with platform_running():
        assert chat(client).status_code == 200
    fresh = Deployment.objects.exclude(pk=deployment.pk).get()
    assert fresh.status == Deployment.Status.READY and fresh.lease_ref != deployment.lease_ref
    assert inference_orders().count() == 2
    assert engines.loads == Counter({deployment.public_id: 1, fresh.public_id: 1})


def test_a_lease_that_fails_under_a_deployment_stops_it(cast, engines):
    provider_with_capacity(cast.provider_a)
    client = cast.client(cast.buyer_a)
    with platform_running():
        assert chat(client).status_code == 200
    deployment = Deployment.objects.get()
    lease = Lease.objects.get(pk=int(deployment.lease_ref))

    # when its node fails (the standing order would go back in the book)
    market.node_failover(node_id=lease.node_id, last_good=timezone.now())
    followers_run_until_idle([WorkloadsFollower()])

    # then the deployment is stopped, its engine unloaded, its order not re-leased
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.STOPPED
    engines.settle()  # the node hears the stop at its next renewal
    assert engines.unloads == Counter({deployment.public_id: 1})
    assert inference_orders().get().state == Order.State.CANCELLED
    # and the next request starts a new one
    with platform_running():
        assert chat(client).status_code == 200
    assert Deployment.objects.exclude(pk=deployment.pk).get().status == Deployment.Status.READY


def test_a_second_delivery_of_the_lease_start_changes_nothing(cast, engines):
    provider_with_capacity(cast.provider_a)
    with platform_running():
        assert chat(cast.client(cast.buyer_a)).status_code == 200
    deployment = Deployment.objects.get()
    order = inference_orders().get()

    assert not inference.deployment_lease_started(
        deployment_id=deployment.public_id, lease_ref=deployment.lease_ref, order_ref=str(order.pk)
    )
    assert Lease.objects.get(pk=int(deployment.lease_ref)).state == Lease.State.ACTIVE


def test_each_pass_of_the_matching_loop_stops_idle_deployments(cast, engines):
    from django.core.management import call_command

    # given a deployment last asked for longer ago than its idle timeout
    long_ago = timezone.now() - timedelta(hours=1)
    idle = Deployment.objects.create(
        public_id="dep-idle",
        model=TINY,
        base_model=TINY,
        idle_timeout_seconds=900,
        last_request_at=long_ago,
    )

    out = io.StringIO()
    call_command("run_matching", "--once", stdout=out)

    idle.refresh_from_db()
    assert idle.status == Deployment.Status.STOPPED
    assert "stopped 1 idle inference deployment" in out.getvalue()


def test_an_engine_that_will_not_load_is_a_503_and_the_next_request_loads_again(cast, engines):
    # given GPUs, and weights that fail to load once
    provider_with_capacity(cast.provider_a)
    client = cast.client(cast.buyer_a)
    engines.fail_next.append("the engine did not start: MemoryError: CUDA out of memory")

    with platform_running():
        refused = chat(client)
        served = chat(client)

    # then the first answer says why, in the OpenAI shape, and the next one is served
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "model_unavailable" and "could not be loaded" in error["message"]
    assert "MemoryError" in error["message"] and refused["Retry-After"]
    assert served.status_code == 200, served.json()
    assert engines.loads == Counter({Deployment.objects.get().public_id: 1})


def test_a_slow_engine_load_is_a_503_in_time_and_the_load_carries_on(cast, engines, settings):
    # given GPUs, weights that take longer to load than a request may wait
    settings.INFERENCE_START_TIMEOUT_SECONDS = 2
    provider_with_capacity(cast.provider_a)
    client = cast.client(cast.buyer_a)
    release = engines.hold = threading.Event()

    with platform_running():
        began = time.monotonic()
        waiting = chat(client)
        waited = time.monotonic() - began
        # then the client hears 503 with Retry-After within the bound, the
        # connection not held for the load
        assert waiting.status_code == 503
        error = waiting.json()["error"]
        assert error["code"] == "model_unavailable" and "is loading" in error["message"]
        assert waiting["Retry-After"] == str(inference.RETRY_AFTER_SECONDS)
        assert 2 <= waited < 2 + 8
        # and the load carries on: once done, the next request is served, loaded once
        release.set()
        served = chat(client)

    assert served.status_code == 200, served.json()
    assert engines.loads == Counter({Deployment.objects.get().public_id: 1})


def test_the_start_wait_is_bounded_below_the_clients_timeouts(settings):
    # Together's client gives up after 60 s: the wait is at most 45 s by configuration
    assert settings.INFERENCE_START_TIMEOUT_SECONDS <= settings.INFERENCE_START_TIMEOUT_MAX_SECONDS
    assert settings.INFERENCE_START_TIMEOUT_MAX_SECONDS < 60
