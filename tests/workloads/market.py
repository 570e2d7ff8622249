"""A running market for the acceptance tests: a provider's node and offers, a buyer
with credit, and the platform's background work (matching rounds, followers, a
dramatiq worker) running in threads while the test talks to a live server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
from django.db import close_old_connections, connection
from dramatiq import Worker

from core.followers import follower_run_once, registered
from core.models import Organization


def provider_with_capacity(provider: Organization) -> None:
    from providers import demo

    demo.load(provider=provider)


def buyer_credit(buyer: Organization, amount_micros: int) -> None:
    from ledger import services as billing

    billing.credits_grant(
        organization=buyer,
        amount_micros=amount_micros,
        currency="USD",
        reason="test credits",
        transfer_id=f"test-credit-{buyer.pk}-{amount_micros}",
    )


def _platform_step() -> None:
    from marketplace.assignments.services import assignments_reap
    from marketplace.services import matching_round
    from marketplace.workloads.dedicated import dedicated_tick

    matching_round(wait=False)
    for follower in registered():
        while follower_run_once(follower):
            pass
    assignments_reap()
    dedicated_tick()


@contextmanager
def platform_running(period: float = 0.1) -> Iterator[None]:
    """Matching, followers, the assignments' reaper and a worker (the workloads'
    actors) until the block ends. Training runs in the node's agent
    (conftest.demo_node_agent), never here."""
    broker = dramatiq.get_broker()
    broker.flush_all()
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                close_old_connections()
                _platform_step()
                stop.wait(period)
        except BaseException as error:  # surfaced to the test below
            failures.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=loop, name="platform", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        worker.stop()
    if failures:
        raise failures[0]


def wait_for(predicate, *, timeout: float = 90.0, every: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(every)
