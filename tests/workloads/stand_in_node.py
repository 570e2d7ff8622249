"""A stand-in for the leased node, in a thread of the test process: it speaks the
node's protocol through the same services the agent API calls (claim, reports,
the relay's take and reply), for tests of the control plane that talk to an
in-process test client (the real node — the agent and its engine as processes,
over HTTP — is exercised by tests/node/test_inference_relay.py and the official
clients' journeys).

By default each relayed request is answered "Five." in two chunks; ``answer`` may
answer otherwise, and ``engine`` runs a real engine in this process behind the same
replies as the node's (runtime.serve.Server)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import close_old_connections, connection

from marketplace.assignments import services as assignments
from marketplace.assignments.models import Assignment
from marketplace.workloads.relay import relay


def five(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"request": item["id"], "accepted": True},
        {"request": item["id"], "text": "Five", "finish_reason": None},
        {"request": item["id"], "text": ".", "finish_reason": "stop"},
    ]


class StandInNode:
    """The leased node, in a thread: claims each queued serve assignment (an engine
    load), reports the engine started (``fail_next``: reports it failed to load
    instead; ``hold``: waits for it before starting), renews, answers each relayed
    request "Five." in two chunks, and stops the engine when told to (an unload)."""

    def __init__(
        self,
        answer: Callable[[dict[str, Any]], list[dict[str, Any]]] = five,
        engine: Any = None,
    ) -> None:
        self.answer = answer
        self.server = None
        if engine is not None:
            from runtime.serve import Server

            self.server = Server(engine, emit=self._engine_reply)
        self._deployment_of: dict[str, str] = {}
        self.loads: Counter[str] = Counter()
        self.unloads: Counter[str] = Counter()
        self.fail_next: list[str] = []
        self.hold: threading.Event | None = None
        self._stop = threading.Event()
        self._serving: dict[int, dict] = {}
        self._thread = threading.Thread(target=self._loop, name="stand-in-node", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _report(self, run: dict, items: list[dict]) -> assignments.Report:
        run["batch"] += 1
        return assignments.assignment_report(
            node_id=run["node_id"],
            assignment_id=run["id"],
            attempt=run["attempt"],
            batch=run["batch"],
            items=items,
        )

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                close_old_connections()
                self._step()
                self._stop.wait(0.02)
        finally:
            connection.close()

    def _step(self) -> None:
        queued = Assignment.objects.filter(
            kind=Assignment.Kind.SERVE, state=Assignment.State.QUEUED
        ).order_by("pk")
        for assignment in queued:
            claim = assignments.assignment_claim(
                node_id=assignment.node_id, assignment_id=assignment.pk
            )
            deployment_id = assignment.workload_id
            run = {
                "id": assignment.pk,
                "node_id": assignment.node_id,
                "attempt": claim.assignment.attempt,
                "batch": 0,
                "deployment": deployment_id,
                "renewed": time.monotonic(),
                "started": False,
            }
            if self.fail_next:
                self._report(run, [{"type": "failed", "reason": self.fail_next.pop()}])
                continue
            self._serving[assignment.pk] = run
        for run in list(self._serving.values()):
            if not run["started"]:
                if self.hold is not None and not self.hold.is_set():
                    if time.monotonic() - run["renewed"] > 0.5:
                        self._report(run, [])
                        run["renewed"] = time.monotonic()
                    continue
                self._report(run, [{"type": "started"}])
                run["started"] = True
                self.loads[run["deployment"]] += 1
            if time.monotonic() - run["renewed"] > 0.5:
                answer = self._report(run, [])
                run["renewed"] = time.monotonic()
                if answer.stop:
                    self._report(run, [{"type": "finished", "exit_code": 0}])
                    self.unloads[run["deployment"]] += 1
                    del self._serving[run["id"]]
                    continue
            queues = relay()
            for item in queues.take(deployment_id=run["deployment"], limit=16, wait=0):
                if self.server is not None:
                    self._deployment_of[str(item["id"])] = run["deployment"]
                    self.server.handle(item)
                else:
                    queues.reply(deployment_id=run["deployment"], replies=self.answer(item))

    def _engine_reply(self, line: dict[str, Any]) -> None:
        deployment_id = self._deployment_of.get(str(line.get("request")))
        if deployment_id is not None:
            relay().reply(deployment_id=deployment_id, replies=[line])
            connection.close()  # written from the engine's threads

    def settle(self) -> None:
        """Let the node see every stop asked so far (its renewals answer them)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            live = Assignment.objects.filter(
                kind=Assignment.Kind.SERVE, state__in=Assignment.LIVE_STATES, stop_requested=True
            )
            if not live.exists():
                return
            time.sleep(0.05)


@contextmanager
def served_deployment(
    cast: Any,
    *,
    model: str = "tandem/tiny-llama",
    answer: Callable[[dict[str, Any]], list[dict[str, Any]]] = five,
    engine: Any = None,
) -> Iterator[tuple[str, StandInNode]]:
    """A ready deployment of ``model`` on the demo provider's node (leased through the
    market), its requests answered by a stand-in node until the block ends. Needs a
    transactional test (the node and the platform run in threads)."""
    from marketplace.workloads import inference
    from tests.workloads.market import platform_running, provider_with_capacity

    provider_with_capacity(cast.provider_a)
    node = StandInNode(answer=answer, engine=engine)
    node.start()
    try:
        with platform_running():
            served = inference.model_resolve(organization=cast.buyer_a, name=model)
            deployment = inference.deployment_acquire(organization=cast.buyer_a, served=served)
        yield deployment.public_id, node
    finally:
        node.close()
