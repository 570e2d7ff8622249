"""The node's work loop: ``WorkLoop`` long-polls the node's assignments (a blocking
query), claims each queued one and hands it to the supervisor of its kind
(providers.agent_runs ``RunSupervisor`` for a command, providers.agent_train for
``train``, providers.agent_serve for ``serve``); see providers.agent_runs for the
protocol. Standard library only, like the rest of the agent."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from providers.agent_client import AgentError
from providers.agent_drivers import Driver, RunAs, SubprocessDriver
from providers.agent_network import free_port, node_address
from providers.agent_runs import RunSupervisor, WorkRoot
from providers.agent_serve import ServeSupervisor
from providers.agent_train import TrainSupervisor

logger = logging.getLogger(__name__)


class WorkLoop(threading.Thread):
    """Long-polls the node's assignments, claims what is queued, supervises the runs.
    ``node_id`` is a callable: the agent may register again under a new id."""

    def __init__(
        self,
        *,
        client: Any,
        node_id: Callable[[], int | None],
        work_dir: str | Path,
        run_as: str | None = None,
        driver: Driver | None = None,
        wait_seconds: int = 25,
        flush_seconds: float = 1.0,
        grace_seconds: float = 2.0,
        stop: threading.Event | None = None,
        address: str | None = None,
    ) -> None:
        super().__init__(name="work-loop", daemon=True)
        self.client = client
        # This node's address as the other nodes of a gang reach it (its rendezvous
        # endpoint when it is member 0; torchrun's --local-addr).
        self.address = address
        self.node_id = node_id
        self.root = WorkRoot(work_dir)
        # The trainer is Tandem's own code (runtime.launch), run as the agent's user
        # unless --run-as names one; a buyer's command never runs as root.
        self.train_run_as = RunAs.lookup(run_as) if run_as else None
        if run_as is None and hasattr(os, "geteuid") and os.geteuid() == 0:
            run_as = "nobody"  # never run a buyer's command as root
        self.run_as = RunAs.lookup(run_as) if run_as else None
        self.driver = driver or SubprocessDriver()
        self.wait_seconds = wait_seconds
        self.flush_seconds = flush_seconds
        self.grace_seconds = grace_seconds
        self.stop = stop or threading.Event()
        self.runs: dict[int, RunSupervisor] = {}
        # Guards ``runs`` against stop_all from the agent's main thread: a claim that
        # finds ``stop`` set under it starts nothing, so nothing outlives stop_all.
        self._runs_lock = threading.Lock()
        self.index = 0
        self.fatal: Exception | None = None

    def run(self) -> None:
        killed = self.root.clean_after_crash()
        if killed:
            logger.warning("killed %d process groups left by an earlier agent", killed)
        backoff = 1.0
        try:
            while not self.stop.is_set():
                node_id = self.node_id()
                if node_id is None:
                    self.stop.wait(1.0)
                    continue
                try:
                    answer = self.client.get(
                        f"/api/v1/agent/nodes/{node_id}/assignments"
                        f"?index={self.index}&wait={self.wait_seconds}",
                        timeout=self.wait_seconds + 15,
                    )
                    backoff = 1.0
                except AgentError as exc:
                    if exc.status in (401, 403):
                        self.fatal = exc
                        logger.error("assignments refused: %s", exc)
                        return
                    logger.warning("assignments query failed: %s", exc)
                    self.index = 0  # start afresh: the next answer is the whole list
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
                try:
                    self._apply(node_id, answer)
                except Exception:  # a bug must not end the loop: start afresh
                    logger.exception("assignments answer not applied")
                    self.index = 0
                    self.stop.wait(backoff)
        finally:
            self.stop_all("the agent is stopping")

    def _apply(self, node_id: int, answer: dict[str, Any]) -> None:
        self.index = int(answer["index"])
        with self._runs_lock:
            for assignment_id, supervisor in list(self.runs.items()):
                if not supervisor.is_alive():
                    del self.runs[assignment_id]
        if not answer.get("changed"):
            return
        live = {int(item["id"]): item for item in answer["assignments"]}
        for assignment_id, supervisor in self.runs.items():
            item = live.get(assignment_id)
            if item is None:
                supervisor.request_stop("the server no longer lists it")
            elif item.get("stop"):
                supervisor.request_stop(item.get("stop_reason") or "stop requested")
        for assignment_id, item in live.items():
            if (
                item["state"] == "queued"
                and not item.get("stop")
                and assignment_id not in self.runs
            ):
                self._claim(node_id, assignment_id, item)

    def _claim(self, node_id: int, assignment_id: int, item: dict[str, Any]) -> None:
        body: dict[str, Any] = {}
        if int(item.get("gang_size") or 1) > 1:
            # A gang member offers host:port for the rendezvous (member 0's hosts it).
            address = self.address or node_address(self.client.server)
            host = f"[{address}]" if ":" in address else address  # IPv6 in brackets
            body["endpoint"] = f"{host}:{free_port(address)}"
        try:
            claim = self.client.post(
                f"/api/v1/agent/nodes/{node_id}/assignments/{assignment_id}/claim", body
            )
        except AgentError as exc:
            logger.info("assignment %s not claimed: %s", assignment_id, exc)
            return
        logger.info(
            "claimed assignment %s (%s), attempt %s on GPUs %s",
            assignment_id,
            claim.get("kind"),
            claim.get("attempt"),
            ",".join(claim.get("gpu_uuids", [])),
        )
        if claim.get("kind") not in ("command", "train", "serve"):  # kinds it does not run yet
            return
        with self._runs_lock:
            if self.stop.is_set():  # claimed as the agent stops: hand it back as failed
                self._give_up(node_id, claim, "the agent stopped before the run started")
                return
            self._start_run(node_id, claim)

    def _give_up(self, node_id: int, claim: dict[str, Any], reason: str) -> None:
        with contextlib.suppress(AgentError):
            self.client.post(
                f"/api/v1/agent/nodes/{node_id}/runs/{claim['id']}/events",
                {
                    "attempt": claim["attempt"],
                    "batch": 1,
                    "events": [
                        {"type": "failed", "reason": reason}
                        | ({"retry": True} if claim.get("kind") == "train" else {})
                    ],
                },
            )

    def _start_run(self, node_id: int, claim: dict[str, Any]) -> None:
        assignment_id = int(claim["id"])
        kind: type[RunSupervisor] = RunSupervisor
        extra: dict[str, Any] = {}
        if claim.get("kind") == "train":
            kind = TrainSupervisor
            extra["address"] = self.address
        elif claim.get("kind") == "serve":
            kind = ServeSupervisor
        supervisor = kind(
            **extra,
            client=self.client,
            node_id=node_id,
            claim=claim,
            root=self.root,
            driver=self.driver,
            run_as=self.train_run_as if kind is not RunSupervisor else self.run_as,
            flush_seconds=self.flush_seconds,
            grace_seconds=self.grace_seconds,
        )
        self.runs[assignment_id] = supervisor
        supervisor.start()

    def stop_all(self, reason: str) -> None:
        """Stop every run and wait for them (each kills its process group). Call with
        ``stop`` set, so that no new run starts meanwhile."""
        with self._runs_lock:
            supervisors = list(self.runs.values())
        for supervisor in supervisors:
            supervisor.request_stop(reason, by_server=False)
        for supervisor in supervisors:
            supervisor.join(timeout=self.grace_seconds + 10)
