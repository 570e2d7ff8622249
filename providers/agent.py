"""The node agent, usable as a library (``Agent``), as ``python -m providers.agent`` (no
Django needed) and as ``manage.py run_agent`` (the same flags).

It registers the node with its inventory (from NVML, or from an inventory file for
nodes NVML cannot probe), then sends a heartbeat with per-GPU telemetry every
``heartbeat_interval_seconds`` (the server says how often). With ``--work-dir`` it also
runs the node's leased work (providers.agent_runs: a blocking query for the node's
assignments, claims, the runs themselves, their reports). Standard library only: the
agent runs on GPU nodes that have Python but not necessarily our web stack.

Inventory file (``--inventory inventory.json``)::

    {
      "hostname": "gpu-node-01",            # optional: default is this machine's
      "site": "Main hall",                  # optional: one of your sites, by name
      "driver_version": "550.54.15",
      "cuda_version": "12.4",
      "gpus": [
        {"index": 0, "uuid": "GPU-...", "name": "NVIDIA H100 80GB HBM3",
         "memory_total_mib": 81559, "interconnect": "nvlink", "nvlink_links": 18,
         "pcie_generation": 5, "pcie_width": 16, "mig_mode": false}
      ]
    }

With a file, heartbeats carry no telemetry (nothing probes the GPUs): they say the
node is alive, which is what health and uptime need.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from providers.agent_client import AGENT_VERSION, AgentError, Client
from providers.agent_work import WorkLoop
from providers.nvml import Nvml, NvmlUnavailable

logger = logging.getLogger(__name__)


class InventoryFileError(AgentError):
    pass


def load_inventory_file(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InventoryFileError(f"cannot read inventory file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InventoryFileError(f"{path} line {exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise InventoryFileError(f'{path}: needs an object with a "gpus" list')
    for position, gpu in enumerate(data["gpus"]):
        missing = {"index", "uuid", "name", "memory_total_mib"} - set(gpu)
        if missing:
            raise InventoryFileError(f"{path}: gpus[{position}] lacks {', '.join(sorted(missing))}")
    return data


class Agent:
    """``Agent(server=..., key=...).run()``; ``nvml`` is pynvml or a fake of it."""

    def __init__(
        self,
        *,
        server: str,
        key: str,
        site: str | None = None,
        hostname: str | None = None,
        inventory_path: str | Path | None = None,
        nvml: Any = None,
        interval_seconds: float | None = None,
        work_dir: str | Path | None = None,
        run_as: str | None = None,
        wait_seconds: int = 25,
        advertise_address: str | None = None,
    ) -> None:
        self.client = Client(server=server, key=key)
        self.advertise_address = advertise_address
        # Leased work (providers.agent_runs): run when a work directory is given.
        self.work_dir = work_dir
        self.run_as = run_as
        self.wait_seconds = wait_seconds
        self.work: Any = None
        self.file = load_inventory_file(inventory_path) if inventory_path else None
        self.site = site or (self.file or {}).get("site")
        self.hostname = hostname or (self.file or {}).get("hostname") or socket.gethostname()
        self.nvml: Nvml | None = None if self.file else Nvml(nvml)
        self.interval_override = interval_seconds
        self.interval_seconds: float = interval_seconds or 15
        self.node_id: int | None = None
        self.heartbeats_sent = 0

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Open NVML (raises nvml.NvmlUnavailable without a driver) and register."""
        if self.nvml is not None:
            self.nvml.start()
        self.register()

    def stop(self) -> None:
        if self.nvml is not None:
            self.nvml.stop()

    def inventory(self) -> dict[str, Any]:
        if self.file is not None:
            return {
                "driver_version": self.file.get("driver_version", ""),
                "cuda_version": self.file.get("cuda_version", ""),
                "gpus": self.file["gpus"],
            }
        assert self.nvml is not None
        return self.nvml.inventory().as_dict()

    def register(self) -> int:
        body = {
            "hostname": self.hostname,
            "site": self.site,
            "agent_version": AGENT_VERSION,
            "inventory_source": "file" if self.file else "nvml",
            **self.inventory(),
        }
        answer = self.client.post("/api/v1/agent/nodes/register", body)
        self.node_id = int(answer["node_id"])
        if self.interval_override is None:
            self.interval_seconds = float(answer["heartbeat_interval_seconds"])
        logger.info(
            "registered node %s as %s with %d GPUs",
            self.hostname,
            self.node_id,
            len(answer["gpus"]),
        )
        return self.node_id

    def telemetry(self) -> list[dict[str, Any]]:
        if self.nvml is None:
            return [{"uuid": gpu["uuid"]} for gpu in (self.file or {}).get("gpus", [])]
        return [sample.as_dict() for sample in self.nvml.telemetry()]

    def heartbeat(self) -> dict[str, Any]:
        if self.node_id is None:
            self.register()
        try:
            answer = self.client.post(
                f"/api/v1/agent/nodes/{self.node_id}/heartbeat", {"gpus": self.telemetry()}
            )
        except AgentError as exc:
            if exc.status == 404:  # the node was removed: register afresh
                self.node_id = None
            raise
        self.heartbeats_sent += 1
        if answer.get("unknown_gpu_uuids"):
            self.register()  # the GPUs changed under us: report the new inventory
        return answer

    def run(
        self, *, max_heartbeats: int | None = None, stop: threading.Event | None = None
    ) -> None:
        """Heartbeat until ``stop`` is set or ``max_heartbeats`` were sent, running the
        node's leased work meanwhile (with a work directory). Network errors are logged
        and retried at the next beat: a node must survive a server restart. On the way
        out every run is stopped (killed, its work directory wiped)."""
        stop = stop or threading.Event()
        if self.work_dir is not None:
            self.work = WorkLoop(
                client=self.client,
                node_id=lambda: self.node_id,
                work_dir=self.work_dir,
                run_as=self.run_as,
                wait_seconds=self.wait_seconds,
                stop=threading.Event(),
                address=self.advertise_address,
            )
            self.work.start()
        try:
            while not stop.is_set():
                try:
                    answer = self.heartbeat()
                    logger.info("heartbeat %d: %s", self.heartbeats_sent, answer.get("health"))
                except AgentError as exc:
                    if exc.status in (401, 403):
                        raise  # a revoked key will not get better by retrying
                    logger.warning("heartbeat failed: %s", exc)
                if self.work is not None and self.work.fatal is not None:
                    raise self.work.fatal
                if max_heartbeats is not None and self.heartbeats_sent >= max_heartbeats:
                    return
                stop.wait(self.interval_seconds)
        finally:
            if self.work is not None:
                self.work.stop.set()
                self.work.stop_all("the agent is stopping")


# --- the command line (python -m providers.agent; manage.py run_agent) --------------

EXIT_REFUSED = 2
EXIT_NO_NVML = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="e.g. https://tandem.example")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="this node's agent key")
    key.add_argument("--key-file", help="a file holding this node's agent key (keep it mode 0600)")
    parser.add_argument("--site", help="the name of one of your sites")
    parser.add_argument("--hostname", help="default: this machine's hostname")
    parser.add_argument("--inventory", help="inventory JSON file instead of NVML")
    parser.add_argument(
        "--interval",
        type=float,
        help="seconds between heartbeats (default: what the server says)",
    )
    parser.add_argument("--count", type=int, help="stop after this many heartbeats")
    parser.add_argument(
        "--work-dir",
        help="where leased work runs (a directory per run, wiped after it); without it "
        "the agent only heartbeats",
    )
    parser.add_argument(
        "--run-as",
        help="the user leased work runs as (default: nobody when the agent is root, "
        "else the agent's own user)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=0,
        help="keep trying to register this many seconds while the server cannot be "
        "reached (it may be starting too); default: fail at once",
    )
    parser.add_argument(
        "--wait",
        type=int,
        default=25,
        help="seconds each blocking query for assignments may wait (1 to 30)",
    )
    parser.add_argument(
        "--advertise-address",
        help="this node's address as the other nodes of a gang reach it (multi-node "
        "training's rendezvous); default: the address this node reaches the server from",
    )


def read_key(options: dict[str, Any]) -> str:
    if options.get("key"):
        return str(options["key"])
    path = Path(options["key_file"])
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise AgentError(f"cannot read the key file {path}: {exc}") from None
    if not key:
        raise AgentError(f"the key file {path} is empty")
    return key


def _start(agent: Agent, timeout: float) -> None:
    """Register, retrying for ``timeout`` seconds while the server is unreachable (an
    answer, even a refusal, ends the wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            agent.start()
            return
        except AgentError as exc:
            if exc.status is not None or time.monotonic() >= deadline:
                raise
            logger.info("server not reachable yet, retrying: %s", exc)
            time.sleep(1.0)


def run_from_options(
    options: dict[str, Any], *, out: Any = sys.stdout, err: Any = sys.stderr
) -> int:
    """Register and run until stopped (SIGTERM or Ctrl-C); the process's exit code."""

    def fail(message: str, code: int) -> int:
        err.write(message + "\n")
        err.flush()
        return code

    try:
        agent = Agent(
            server=options["server"],
            key=read_key(options),
            site=options.get("site"),
            hostname=options.get("hostname"),
            inventory_path=options.get("inventory"),
            interval_seconds=options.get("interval"),
            work_dir=options.get("work_dir"),
            run_as=options.get("run_as"),
            wait_seconds=max(1, min(30, int(options.get("wait") or 25))),
            advertise_address=options.get("advertise_address"),
        )
        _start(agent, float(options.get("start_timeout") or 0))
    except NvmlUnavailable as exc:
        return fail(str(exc), EXIT_NO_NVML)
    except InventoryFileError as exc:
        return fail(str(exc), EXIT_REFUSED)
    except AgentError as exc:
        return fail(f"registration failed: {exc}", EXIT_REFUSED)
    work = f"; leased work in {agent.work_dir}" if agent.work_dir else ""
    out.write(
        f"node {agent.hostname} registered as {agent.node_id}; "
        f"heartbeat every {agent.interval_seconds:g} s{work}\n"
    )
    out.flush()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (make run's trap, systemd) stops the runs cleanly, as Ctrl-C does.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        agent.run(max_heartbeats=options.get("count"), stop=stop)
    except AgentError as exc:
        return fail(str(exc), EXIT_REFUSED)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m providers.agent",
        description="The Tandem node agent: inventory, heartbeats and leased work.",
    )
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run_from_options(options)


if __name__ == "__main__":
    sys.exit(main())
