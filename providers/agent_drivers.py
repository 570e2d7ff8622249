"""How a run's command is started on the node: the ``Driver`` interface, and
``SubprocessDriver``. Standard library only, like the rest of the agent.

A run comes to its driver prepared (providers.agent_runs.RunSupervisor): its own work
directory (the spec's files written there) and an environment of its own (never the
agent's, which holds the agent key) with ``CUDA_VISIBLE_DEVICES`` set to the leased
GPUs' UUIDs. ``SubprocessDriver`` starts it as a new session and process group of
this machine, as an unprivileged user (``nobody`` by default) when the agent runs as
root, with its output read line by line. A container driver plugs in behind the same
``Driver.start`` -> ``RunHandle`` interface: the Docker SDK's
``containers.run(image, command, detach=True, device_requests=[DeviceRequest(
device_ids=gpu_uuids, capabilities=[["gpu"]])])``
(``--gpus device=UUID``), the work directory as a bind mount, output from
``container.logs(stream=True)``, ``kill`` as ``container.stop(timeout=grace)`` then
``remove(force=True)``; it is not written yet (it needs an image in the spec and the
docker package on the node).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

MAX_LINE_CHARS = 4096  # the server's bound on one log line
PR_SET_PDEATHSIG = 1


class DriverError(RuntimeError):
    """The run could not be started (no such program, no permission, bad spec)."""


class RunHandle(Protocol):
    pgid: int
    stdin: Any  # the run's standard input (a binary pipe) when started with stdin_pipe

    def wait(self, timeout: float) -> int | None:
        """The exit code once the run's first process has exited (-N: killed by signal
        N), else None after ``timeout`` seconds."""

    def kill(self, grace_seconds: float) -> None:
        """Stop everything the run started: SIGTERM to its group, SIGKILL after the
        grace. Safe to call more than once, and after it exited."""

    def close(self) -> None:
        """Kill what is left of its group and wait for its output to drain."""


class Driver(Protocol):
    def start(
        self,
        *,
        command: list[str],
        work_dir: Path,
        env: dict[str, str],
        run_as: RunAs | None,
        on_line: Callable[[str, str], None],
        stdin_pipe: bool = False,
        whole_stdout_lines: bool = False,
    ) -> RunHandle: ...


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged user a run is started as (the agent running as root)."""

    uid: int
    gid: int
    name: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        import grp
        import pwd

        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise DriverError(f"no user {name!r} on this node to run leased work as") from None
        with contextlib.suppress(KeyError):  # its own group's name, for the logs
            grp.getgrgid(entry.pw_gid)
        return cls(uid=entry.pw_uid, gid=entry.pw_gid, name=name)


def _pdeathsig_function() -> Callable[[], None] | None:
    """A preexec function that asks Linux to SIGKILL the child when the thread that
    started it dies; None elsewhere. Resolved here, before any fork: the child only
    calls an already loaded C function."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the agent died before prctl took effect
            os._exit(137)

    return die_with_parent


_DIE_WITH_PARENT = _pdeathsig_function()


class _SubprocessHandle:
    def __init__(self, process: subprocess.Popen[bytes], readers: list[threading.Thread]) -> None:
        self.process = process
        self.pgid = process.pid  # a new session: its leader's pid is the group's id
        self.readers = readers
        self.stdin = process.stdin

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _signal_group(self, signum: int) -> bool:
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:  # cannot happen for our own children; nothing to do
            return False
        return True

    def kill(self, grace_seconds: float) -> None:
        if self._signal_group(signal.SIGTERM):
            deadline = time.monotonic() + grace_seconds
            while time.monotonic() < deadline and group_alive(self.pgid):
                self.wait(0.05)
        self._signal_group(signal.SIGKILL)
        self.wait(5.0)

    def close(self) -> None:
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                self.stdin.close()
        self._signal_group(signal.SIGKILL)
        self.wait(5.0)
        for reader in self.readers:
            reader.join(timeout=5.0)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (a zombie counts until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pump(stream: Any, name: str, on_line: Callable[[str, str], None], limit: int | None) -> None:
    """Read a pipe line by line; long lines are cut into pieces of ``limit`` characters
    (the server's bound on a log line), or passed whole with ``limit`` None."""
    with stream:
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\n").replace("\x00", "\ufffd")
            if limit is None:
                on_line(name, text)
                continue
            for start in range(0, max(len(text), 1), limit):
                on_line(name, text[start : start + limit])


class SubprocessDriver:
    """A run as a process group of this machine (see the module doc)."""

    def start(
        self,
        *,
        command: list[str],
        work_dir: Path,
        env: dict[str, str],
        run_as: RunAs | None,
        on_line: Callable[[str, str], None],
        stdin_pipe: bool = False,
        whole_stdout_lines: bool = False,
    ) -> RunHandle:
        """``stdin_pipe``: the run reads what the agent writes to ``handle.stdin``
        (a serve run's requests); else its standard input is empty.
        ``whole_stdout_lines``: standard output lines reach ``on_line`` whole (a serve
        run's replies, JSON of any length); else cut to the server's log line bound."""
        extra: dict[str, Any] = {}
        if run_as is not None:
            extra.update(user=run_as.uid, group=run_as.gid, extra_groups=[])
        try:
            process = subprocess.Popen(  # noqa: S603  (the buyer's command, on its lease)
                command,
                cwd=work_dir,
                env=env,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_DIE_WITH_PARENT,  # see _pdeathsig_function
                **extra,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise DriverError(f"could not start {command[0]!r}: {exc}") from None
        readers = [
            threading.Thread(
                target=_pump,
                args=(pipe, name, on_line, limit),
                name=f"run-{name}",
                daemon=True,
            )
            for pipe, name, limit in (
                (process.stdout, "stdout", None if whole_stdout_lines else MAX_LINE_CHARS),
                (process.stderr, "stderr", MAX_LINE_CHARS),
            )
        ]
        for reader in readers:
            reader.start()
        return _SubprocessHandle(process, readers)
