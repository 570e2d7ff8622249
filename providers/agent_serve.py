"""An inference deployment on the node: the agent's side of assignments of kind
``serve`` (the server's side is marketplace/assignments/serving.py and the relay,
marketplace/workloads/relay.py). Standard library only, like the rest of the agent.

``ServeSupervisor`` is a ``RunSupervisor`` (its own session, process group and work
directory, ``CUDA_VISIBLE_DEVICES`` = the leased GPUs, killed on stop or a 409)
whose command is the engine, ``python -m runtime.serve --spec spec.json``:

1. For a fine-tuned model it downloads the trained adapter from the claim's signed
   URL (checked against its SHA-256) and unpacks it beside the spec.
2. The engine loads and prints ``{"event": "ready"}``: the run is reported
   ``started``, which the gateway reads as the deployment ready to serve.
3. The relay, over outbound HTTP only (a node behind NAT serves): a taker thread
   long-polls ``POST …/serve/{id}/requests`` for batches of the deployment's
   requests and writes them to the engine's standard input, where they join the
   engine's batches; the engine's replies (its standard output: the accept, the
   chunks, errors) are collected and a poster thread sends whatever has gathered
   in one ``POST …/serve/{id}/replies`` (while one post is out, the next batch
   gathers). Requests the gateway no longer waits for come back as ``gone`` and are
   cancelled in the engine. Both carry the claim's attempt: a 409 or 404 stops the
   run at once, as for any run.
4. The engine's standard error (each batch's size among it) goes to the run's log;
   the claim is renewed by the supervisor's reports as for any run.

The agent key never reaches the engine's process: it has no network and no
credentials; the agent relays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

from providers.agent_client import AgentError
from providers.agent_drivers import DriverError
from providers.agent_runs import RunSupervisor
from providers.agent_train import (
    PASS_THROUGH_ENV,
    PROJECT_ROOT,
    TransferError,
    _download,
    _sha256_file,
)

logger = logging.getLogger(__name__)

TAKE_MAX = 32  # requests taken at once (the engine batches up to its own max_batch)
TAKE_WAIT_SECONDS = 10
MAX_REPLIES_PER_POST = 2000
LINGER_SECONDS = 0.01
MAX_LOG_LINE_CHARS = 4096  # the server's bound on a log line (stdout comes whole here)


def coalesce(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One reply per request where the engine's chunks of a request gathered while a
    post was out: their texts joined (in order), their sampled ``tokens`` (where the
    request asked for them) joined too, the finish reason of the last. The joined
    text is the same; a stream's pieces are coarser only when the relay is behind the
    engine."""
    merged: list[dict[str, Any]] = []
    open_chunk: dict[str, int] = {}  # request -> index in merged of its unfinished chunk
    for reply in replies:
        request_id = str(reply.get("request"))
        at = open_chunk.get(request_id) if "text" in reply else None
        if at is not None:
            joined = {
                **merged[at],
                "text": merged[at]["text"] + str(reply["text"]),
                "finish_reason": reply.get("finish_reason"),
            }
            if "tokens" in merged[at] or "tokens" in reply:
                joined["tokens"] = [*merged[at].get("tokens", ()), *reply.get("tokens", ())]
            merged[at] = joined
        else:
            merged.append(dict(reply))
            at = len(merged) - 1
        if "text" in reply and reply.get("finish_reason") is None:
            open_chunk[request_id] = at
        else:
            open_chunk.pop(request_id, None)
    return merged


class ServeSupervisor(RunSupervisor):
    """Runs one claimed serve assignment (see the module doc)."""

    started_on_spawn = False
    driver_options: ClassVar[dict[str, Any]] = {"stdin_pipe": True, "whole_stdout_lines": True}

    def __init__(self, *, node_env: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_env = dict(node_env or {})
        self._replies: list[dict[str, Any]] = []
        self._gathered = threading.Condition()
        self._stdin_lock = threading.Lock()
        self._relaying = False
        self._ready = False
        self._last_error = ""  # the engine's last line on stderr, for a failed start
        base = f"/api/v1/agent/nodes/{self.node_id}/serve/{self.assignment_id}"
        self._requests_path = f"{base}/requests"
        self._replies_path = f"{base}/replies"

    def _url(self, url: str) -> str:
        return urllib.parse.urljoin(self.client.server.rstrip("/") + "/", url)

    # -- before the engine starts --

    def _setup(self) -> tuple[list[str], Path, dict[str, str]]:
        spec = self.claim.get("spec") or {}
        if not spec.get("base_model"):
            raise DriverError("the serve spec names no model")
        work_dir = self._prepare({})
        adapter_path = ""
        adapter = (self.claim.get("downloads") or {}).get("adapter")
        if adapter is not None:
            try:
                adapter_path = str(self._unpack_adapter(adapter, work_dir))
            except TransferError as exc:
                raise DriverError(f"could not fetch the adapter: {exc}") from None
        (work_dir / "spec.json").write_text(
            json.dumps(
                {
                    "deployment_id": spec.get("deployment_id", ""),
                    "base_model": spec["base_model"],
                    "adapter_path": adapter_path,
                    "max_batch": int(spec.get("max_batch") or 16),
                }
            )
        )
        command = [sys.executable, "-m", "runtime.serve", "--spec", "spec.json"]
        env = self._env(work_dir, {})
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        for name in PASS_THROUGH_ENV:
            if os.environ.get(name):
                env[name] = os.environ[name]
        env.update(self.node_env)
        if self.run_as is not None:
            for path in [work_dir, *work_dir.rglob("*")]:
                os.chown(path, self.run_as.uid, self.run_as.gid)
        return command, work_dir, env

    def _unpack_adapter(self, adapter: dict[str, Any], work_dir: Path) -> Path:
        archive = work_dir / "adapter.tar"
        _download(self._url(str(adapter["url"])), archive)
        found = _sha256_file(archive)
        if found != adapter["sha256"]:
            raise TransferError(f"adapter SHA-256 is {found}, {adapter['sha256']} expected")
        target = work_dir / "adapter"
        target.mkdir()
        with tarfile.open(archive, mode="r:") as tar:
            tar.extractall(target, filter="data")
        archive.unlink()
        return target

    # -- the engine's output --

    def _on_line(self, stream: str, text: str) -> None:
        if stream == "stdout" and text.startswith("{"):
            try:
                line = json.loads(text)
            except ValueError:
                line = None
            if isinstance(line, dict) and "request" in line:
                with self._gathered:
                    self._replies.append(line)
                    self._gathered.notify()
                return
            if isinstance(line, dict) and line.get("event") == "ready":
                logger.info(
                    "run %s: engine ready (%s on %s)",
                    self.assignment_id,
                    line.get("model"),
                    line.get("device"),
                )
                self._ready = True
                self.outbox.add({"type": "started"})
                self._relay_start()
                return
        if stream == "stderr" and text.strip():
            self._last_error = text.strip()
        super()._on_line(stream, text[:MAX_LOG_LINE_CHARS])

    def _end_event(self, code: int) -> dict[str, Any]:
        if self._ready:
            return super()._end_event(code)
        # The engine never became ready (weights missing, out of memory): the
        # deployment's next request hears why.
        reason = f"the engine did not start (exit code {code}): {self._last_error}"
        return {"type": "failed", "reason": reason[:500]}

    # -- the relay --

    def _stopping(self) -> bool:
        return self.fenced or self._stop_requested.is_set()

    def _relay_start(self) -> None:
        if self._relaying:
            return
        self._relaying = True
        for target, name in ((self._take_loop, "take"), (self._post_loop, "reply")):
            threading.Thread(
                target=target, name=f"serve-{self.assignment_id}-{name}", daemon=True
            ).start()

    def _refused(self, exc: Any) -> bool:
        """A 409 (stale attempt) or 404: the claim is not ours any more: stop now."""
        if exc.status in (404, 409):
            logger.warning("run %s: the relay refused this attempt: %s", self.assignment_id, exc)
            self.fenced = True
            self.request_stop("the server refused this attempt")
            return True
        return False

    def _to_engine(self, lines: list[dict[str, Any]]) -> None:
        handle = self.handle
        if handle is None or handle.stdin is None or not lines:
            return
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        with self._stdin_lock:
            try:
                handle.stdin.write(data.encode())
                handle.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.request_stop("the engine stopped reading", by_server=False)

    def _take_loop(self) -> None:
        pause = 0.2
        while not self._stopping():
            try:
                answer = self.client.post(
                    self._requests_path,
                    {"attempt": self.attempt, "max": TAKE_MAX, "wait": TAKE_WAIT_SECONDS},
                    timeout=TAKE_WAIT_SECONDS + 15,
                )
                pause = 0.2
            except AgentError as exc:
                if self._refused(exc):
                    return
                logger.warning("run %s: taking requests failed: %s", self.assignment_id, exc)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            self._to_engine([item for item in answer.get("requests") or [] if "id" in item])

    def _post_loop(self) -> None:
        pause = 0.2
        while True:
            with self._gathered:
                while not self._replies and not self._stopping():
                    self._gathered.wait(0.5)
                if self._stopping():
                    return
                # A moment more gathers the engine's next chunks into the same post:
                # fewer, fuller posts cost the server (and the node) less per token.
                self._gathered.wait(LINGER_SECONDS)
                batch = coalesce(self._replies[:MAX_REPLIES_PER_POST])
                del self._replies[:MAX_REPLIES_PER_POST]
            try:
                answer = self.client.post(
                    self._replies_path, {"attempt": self.attempt, "replies": batch}
                )
                pause = 0.2
            except AgentError as exc:
                if self._refused(exc):
                    return
                if exc.status == 400:  # a batch the server will never take
                    logger.error("run %s: replies refused: %s", self.assignment_id, exc)
                    continue
                logger.warning("run %s: posting replies failed: %s", self.assignment_id, exc)
                with self._gathered:
                    self._replies[:0] = batch  # sent again, in order, with what follows
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            gone = answer.get("gone") or []
            if gone:
                self._to_engine([{"cancel": request_id} for request_id in gone])

    def request_stop(self, reason: str, *, by_server: bool = True) -> None:
        super().request_stop(reason, by_server=by_server)
        with contextlib.suppress(RuntimeError), self._gathered:
            self._gathered.notify_all()
