"""Leased work on the node: the agent's side of the assignment protocol (the server's
side, and the protocol itself, are described in marketplace/assignments/services.py).

Standard library only, like the rest of the agent. ``WorkLoop`` (providers.agent_work)
long-polls the node's assignments (a blocking query), claims each queued one, and
hands it to a ``RunSupervisor`` thread, which runs it through a ``Driver`` and
reports it: output lines, batched about once a second, and a renewal at least every
``renew_seconds``; the end (``finished`` with the exit code, or ``failed`` with a
reason).

Stopping. The server says stop (the run was cancelled, or its lease ended) in its
answer to a report or in the blocking query; a 409 says the claim is no longer ours
(a stale attempt: the reaper ended it); and a node that cannot renew for a whole TTL
assumes the same. In every case the supervisor kills the run's whole process group
(SIGTERM, then SIGKILL to the group after ``grace_seconds``) and wipes its work
directory. A command that ends by itself has its group killed too: nothing it left
in the background outlives the run.

Children die with the agent:
- each run is its own session and process group (``start_new_session``), so one
  ``killpg`` reaches everything it started (short of a process that makes a session of
  its own: a container or cgroup driver closes that gap);
- on Linux the run's first process gets ``PR_SET_PDEATHSIG`` = SIGKILL (through ctypes,
  resolved before any fork), so it dies when its supervisor thread does, even when the
  agent is killed with SIGKILL;
- its descendants are reached by the process-group file each run leaves under
  ``<work dir>/groups``: an agent starting after a crash kills the groups recorded
  there in this boot (the boot id is recorded with them) and wipes old work
  directories before it claims anything;
- a SIGTERM or Ctrl-C to the agent stops every run as above before it exits.

Kinds: ``command`` (this module), ``train`` (providers.agent_train) and ``serve``
(providers.agent_serve: an inference engine, its requests relayed to it).

Drivers (providers.agent_drivers): ``SubprocessDriver`` runs a command as a process
group of this machine; a container driver plugs in behind the same interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from providers.agent_client import AgentError
from providers.agent_drivers import (
    Driver,
    DriverError,
    RunAs,
    RunHandle,
    group_alive,
)

logger = logging.getLogger(__name__)

FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
MAX_BATCH_EVENTS = 500
MAX_BATCH_CHARS = 512 * 1024
MAX_PENDING_LINES = 20_000  # beyond this (the server unreachable), lines are counted, dropped
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class WorkRoot:
    """``<work dir>/runs/<id>-a<attempt>`` per run; ``<work dir>/groups/<id>`` holds the
    run's process group and the boot it started in, for the cleanup after a crash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.runs = self.path / "runs"
        self.groups = self.path / "groups"
        for folder in (self.path, self.runs, self.groups):
            folder.mkdir(parents=True, exist_ok=True)
        # Traversable, not listable, by the unprivileged run user.
        os.chmod(self.path, 0o711)  # noqa: S103  (execute only: no listing)
        os.chmod(self.runs, 0o711)  # noqa: S103
        os.chmod(self.groups, 0o700)

    def run_dir(self, assignment_id: int, attempt: int) -> Path:
        return self.runs / f"{int(assignment_id)}-a{int(attempt)}"

    def record_group(self, assignment_id: int, pgid: int) -> None:
        (self.groups / str(int(assignment_id))).write_text(f"{pgid} {_boot_id()}\n")

    def forget_group(self, assignment_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.groups / str(int(assignment_id))).unlink()

    def clean_after_crash(self) -> int:
        """Kill the process groups a previous agent recorded in this boot and wipe every
        work directory it left. Returns how many groups were still alive."""
        killed = 0
        boot = _boot_id()
        for record in self.groups.iterdir():
            try:
                pgid_text, _, recorded_boot = record.read_text().strip().partition(" ")
                pgid = int(pgid_text)
            except (OSError, ValueError):
                pgid = 0
                recorded_boot = ""
            if pgid > 1 and recorded_boot == boot and group_alive(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                    killed += 1
            record.unlink(missing_ok=True)
        for leftover in self.runs.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        return killed


# --- one run --------------------------------------------------------------------------


@dataclass
class _Outbox:
    """Events waiting to be reported. A batch that was sent but not acknowledged is
    kept as it was and sent again with the same number (the server applies it once)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    inflight: list[dict[str, Any]] | None = None
    batch: int = 0

    def add(self, event: dict[str, Any]) -> None:
        with self.lock:
            if event["type"] == "log" and len(self.pending) >= MAX_PENDING_LINES:
                self.dropped += 1
                return
            self.pending.append(event)

    def next_batch(self) -> tuple[int, list[dict[str, Any]]]:
        with self.lock:
            if self.inflight is None:
                if self.dropped:
                    note = f"[agent: {self.dropped} lines dropped: the server was unreachable]"
                    self.pending.insert(0, {"type": "log", "stream": "stderr", "text": note})
                    self.dropped = 0
                taken: list[dict[str, Any]] = []
                size = 0
                while self.pending and len(taken) < MAX_BATCH_EVENTS:
                    size += len(self.pending[0].get("text", "")) + 64
                    if taken and size > MAX_BATCH_CHARS:
                        break
                    taken.append(self.pending.pop(0))
                self.batch += 1
                self.inflight = taken
            return self.batch, self.inflight

    def acknowledged(self) -> None:
        with self.lock:
            self.inflight = None

    def has_pending(self) -> bool:
        with self.lock:
            return bool(self.pending) or self.inflight is not None


class RunSupervisor(threading.Thread):
    """Runs one claimed assignment and reports it until it ends (see the module doc)."""

    # A run the agent stops for its own reasons is reported failed; True: reported as
    # given back, so the server moves it to another node (train runs resume there).
    give_back_on_agent_stop = False
    # True: "started" is reported as the process starts; False: the subclass reports
    # it when the work is ready (a serve run: once its engine has loaded).
    started_on_spawn = True
    # Options for Driver.start (a serve run writes requests to its standard input).
    driver_options: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *,
        client: Any,
        node_id: int,
        claim: dict[str, Any],
        root: WorkRoot,
        driver: Driver,
        run_as: RunAs | None,
        flush_seconds: float = 1.0,
        grace_seconds: float = 2.0,
    ) -> None:
        super().__init__(name=f"run-{claim['id']}", daemon=False)
        self.client = client
        self.node_id = node_id
        self.claim = claim
        self.assignment_id = int(claim["id"])
        self.attempt = int(claim["attempt"])
        self.root = root
        self.driver = driver
        self.run_as = run_as
        self.flush_seconds = flush_seconds
        self.grace_seconds = grace_seconds
        self.ttl = float(claim.get("ttl_seconds", 30))
        self.renew_seconds = float(claim.get("renew_seconds", 10))
        self.outbox = _Outbox()
        self.stop_reason: str | None = None
        self.stopped_by_server = False
        self._stop_requested = threading.Event()
        self.pgid: int | None = None
        self.handle: RunHandle | None = None
        self.exit_code: int | None = None
        self.fenced = False  # the server refused our attempt: report nothing more

    def request_stop(self, reason: str, *, by_server: bool = True) -> None:
        """Kill the run at the next tick. ``by_server``: the server asked (cancelled,
        lease ended), so the end is reported as a finish; else (the agent stopping) as
        a failure with the reason."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped_by_server = by_server
        self._stop_requested.set()

    # -- reporting --

    def _report(self) -> dict[str, Any] | None:
        """Send the next batch (or a bare renewal). None when it could not be sent."""
        batch, items = self.outbox.next_batch()
        try:
            answer = self.client.post(
                f"/api/v1/agent/nodes/{self.node_id}/runs/{self.assignment_id}/events",
                {"attempt": self.attempt, "batch": batch, "events": items},
            )
        except AgentError as exc:
            if exc.status == 409 or exc.status == 404:
                logger.warning(
                    "run %s: the server refused attempt %s: %s",
                    self.assignment_id,
                    self.attempt,
                    exc,
                )
                self.fenced = True
                self.request_stop("the server refused this attempt")
                return None
            if exc.status == 400:  # a batch the server will never take: drop it
                logger.error("run %s: batch %s refused: %s", self.assignment_id, batch, exc)
                self.outbox.acknowledged()
                return None
            logger.warning(
                "run %s: report failed (kept for the next try): %s", self.assignment_id, exc
            )
            return None
        self.outbox.acknowledged()
        self.ttl = float(answer.get("ttl_seconds", self.ttl))
        self.renew_seconds = float(answer.get("renew_seconds", self.renew_seconds))
        if answer.get("stop"):
            self.request_stop(answer.get("stop_reason") or "the server said stop")
        return answer

    # -- the run --

    def _env(self, work_dir: Path, spec: dict[str, Any]) -> dict[str, str]:
        env = {
            "PATH": SAFE_PATH,
            "HOME": str(work_dir),
            "LANG": "C.UTF-8",
            "TMPDIR": str(work_dir),
        }
        env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
        env.update(
            {
                "CUDA_VISIBLE_DEVICES": ",".join(self.claim.get("gpu_uuids") or []),
                "TANDEM_RUN_ID": str(self.assignment_id),
                "TANDEM_ATTEMPT": str(self.attempt),
                "TANDEM_WORK_DIR": str(work_dir),
            }
        )
        return env

    def _prepare(self, spec: dict[str, Any]) -> Path:
        work_dir = self.root.run_dir(self.assignment_id, self.attempt)
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(mode=0o700)
        for name, text in (spec.get("files") or {}).items():
            if not FILE_NAME.match(str(name)):
                raise DriverError(f"files: {name!r} is not a plain file name")
            (work_dir / name).write_text(str(text))
        if self.run_as is not None:
            for path in [work_dir, *work_dir.iterdir()]:
                os.chown(path, self.run_as.uid, self.run_as.gid)
        return work_dir

    def _on_line(self, stream: str, text: str) -> None:
        self.outbox.add({"type": "log", "stream": stream, "text": text})

    def _setup(self) -> tuple[list[str], Path, dict[str, str]]:
        """The command, its prepared work directory and its environment."""
        spec = self.claim.get("spec") or {}
        command = [str(arg) for arg in spec.get("command") or []]
        if not command:
            raise DriverError("the spec has no command")
        work_dir = self._prepare(spec)
        return command, work_dir, self._env(work_dir, spec)

    def _output_drained(self, handle: RunHandle) -> None:
        """Called once the run's first process exited, before its end is reported."""

    def run(self) -> None:
        work_dir: Path | None = None
        handle: RunHandle | None = None
        try:
            work_dir = self.root.run_dir(self.assignment_id, self.attempt)
            command, work_dir, env = self._setup()
            handle = self.driver.start(
                command=command,
                work_dir=work_dir,
                env=env,
                run_as=self.run_as,
                on_line=self._on_line,
                **self.driver_options,
            )
            self.handle = handle
            self.pgid = handle.pgid
            self.root.record_group(self.assignment_id, handle.pgid)
            logger.info(
                "run %s (attempt %s) started: process group %s",
                self.assignment_id,
                self.attempt,
                handle.pgid,
            )
            if self.started_on_spawn:
                self.outbox.add({"type": "started"})
            self._supervise(handle)
        except DriverError as exc:
            logger.warning("run %s could not start: %s", self.assignment_id, exc)
            self.outbox.add({"type": "failed", "reason": str(exc)[:500]})
            self._drain()
        except Exception as exc:  # a bug here must not leave the run behind
            logger.exception("run %s: the agent failed", self.assignment_id)
            if handle is not None:
                handle.kill(0)
            self.outbox.add({"type": "failed", "reason": f"the agent failed: {exc}"[:500]})
            self._drain()
        finally:
            if handle is not None:
                handle.close()
            self.root.forget_group(self.assignment_id)
            if work_dir is not None:
                shutil.rmtree(work_dir, ignore_errors=True)

    def _supervise(self, handle: RunHandle) -> None:
        self._report()  # "started", at once: the buyer sees the run running
        last_sent = time.monotonic()
        last_ok = time.monotonic()
        code: int | None = None
        while code is None:
            code = handle.wait(self.flush_seconds if not self._stop_requested.is_set() else 0)
            if code is None and self._stop_requested.is_set():
                logger.info("run %s: stopping (%s)", self.assignment_id, self.stop_reason)
                handle.kill(self.grace_seconds)
                code = handle.wait(5.0)
                if code is None:
                    code = -int(signal.SIGKILL)
                break
            if code is not None:
                self._output_drained(handle)
                break
            now = time.monotonic()
            if self.outbox.has_pending() or now - last_sent >= self.renew_seconds:
                last_sent = now
                if self._report() is not None:
                    last_ok = time.monotonic()
                elif not self.fenced and time.monotonic() - last_ok > self.ttl:
                    # No renewal for a whole TTL: the server has given our claim up.
                    self.fenced = True
                    self.request_stop("no renewal within the claim's TTL", by_server=False)
        handle.close()  # whatever it left in the background goes with it
        self.exit_code = code
        logger.info("run %s exited with %s", self.assignment_id, code)
        if self.fenced:
            return
        if self._stop_requested.is_set() and not self.stopped_by_server:
            reason = f"{self.stop_reason}: killed (exit code {code})"
            failed: dict[str, Any] = {"type": "failed", "reason": reason[:500]}
            if self.give_back_on_agent_stop:
                failed["retry"] = True
            self.outbox.add(failed)
        else:
            self.outbox.add(self._end_event(code))
        self._drain()

    def _end_event(self, code: int) -> dict[str, Any]:
        """The event that reports the run's end by itself (exit code ``code``)."""
        return {"type": "finished", "exit_code": max(-255, min(255, code))}

    def _drain(self) -> None:
        """Report what is left, the end included; give up after a TTL without success
        (the reaper records the run as failed then)."""
        deadline = time.monotonic() + self.ttl
        while self.outbox.has_pending() and not self.fenced and time.monotonic() < deadline:
            if self._report() is None and not self.fenced:
                time.sleep(min(1.0, self.flush_seconds))
