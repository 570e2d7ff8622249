"""A fine-tune's training on the node: the agent's side of assignments of kind
``train`` (the server's side is marketplace/assignments/training.py). Standard
library only, like the rest of the agent.

``TrainSupervisor`` is a ``RunSupervisor`` (its own session, process group and work
directory, ``CUDA_VISIBLE_DEVICES`` = the leased GPUs, killed on stop or a 409)
whose command is the trainer:

1. From the claim's signed URLs it downloads the datasets beside ``spec.json`` and,
   when the job has a committed checkpoint, that checkpoint (checked against its
   SHA-256) into ``artifacts/<key>``, where the trainer resumes from it. A job that
   starts from another job's checkpoint (``init_from``) gets that checkpoint too,
   unpacked into ``init-from/`` beside the spec, whose ``init_from`` then names it:
   the trainer loads only its weights and starts at step 0 (a resume, when the job
   has a checkpoint of its own, still wins).
2. It runs ``python -m runtime.launch --spec spec.json --artifacts artifacts``, or
   ``python -m torch.distributed.run --standalone --nproc-per-node G -m
   runtime.launch …`` when the lease has G > 1 GPUs. A gang member (the claim's
   ``gang_size`` > 1) first waits at the gang's barrier, re-posting its claim until
   the answer carries the rendezvous, then runs ``torchrun --nnodes N
   --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint host:port --rdzv-id id``
   with ``--local-addr`` its node's address, and ``GLOO_SOCKET_IFNAME`` /
   ``NCCL_SOCKET_IFNAME`` the interface holding it (unless set on the node): in a
   container or namespace the hostname often resolves elsewhere. The Python is the
   agent's own (``sys.executable``); ``TANDEM_MODEL_DIR`` and a few library settings
   pass through from the agent's environment, nothing else (the agent key stays out).
3. The trainer's JSON lines become run events: ``started`` → ``training_started``,
   ``step`` → ``step``, ``eval`` → ``evaluation``, batched with the attempt like any
   report. Other lines are forwarded as log lines.
4. ``checkpoint`` and ``finished`` lines name directories under ``artifacts``: each is
   packed as a tar, declared (``POST …/uploads {key, sha256, size}``), PUT to the
   signed URL the answer gives (skipped when the server has those bytes already)
   and committed. The reader stops reading the trainer's output meanwhile, so the
   trainer waits at its next line; the events before it are sent first, so the
   server sees a checkpoint after the steps it follows.
5. The run's end is reported only once its output is read to the end, so the final
   model is committed before ``finished``. A run the agent stops for its own reasons
   (it is stopping, an upload kept failing) is reported ``failed`` with ``retry``: the
   server moves it to another node, which resumes from the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from providers.agent_client import AgentError
from providers.agent_drivers import DriverError, RunHandle
from providers.agent_network import interface_of, node_address
from providers.agent_runs import RunSupervisor

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where runtime/ is, on the node
PASS_THROUGH_ENV = (
    "TANDEM_MODEL_DIR",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS",
    "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
)
CHUNK = 1024 * 1024
UPLOAD_TRIES = 5
GANG_POLL_SECONDS = 0.5


class TransferError(RuntimeError):
    pass


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path, *, timeout: float = 60.0) -> None:
    """GET a signed URL into ``target`` (no agent key: the signature is the credential)."""
    request = urllib.request.Request(url, method="GET")  # noqa: S310 (the server's URL)
    try:
        with (
            urllib.request.urlopen(request, timeout=timeout) as response,  # noqa: S310
            target.open("wb") as out,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise TransferError(f"download refused: HTTP {exc.code} {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransferError(f"download failed: {exc}") from None


def _put(
    url: str, source: Path, *, headers: dict[str, str] | None = None, timeout: float = 300.0
) -> None:
    """PUT ``source`` to a signed URL with the headers the server said it must carry
    (a bucket's signed checksum)."""
    size = source.stat().st_size
    with source.open("rb") as body:
        request = urllib.request.Request(  # noqa: S310
            url,
            data=body,
            method="PUT",
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            raise TransferError(f"upload refused: HTTP {exc.code} {exc.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TransferError(f"upload failed: {exc}") from None


def pack(directory: Path, target: Path) -> None:
    """A plain tar of ``directory``'s contents, members in name order."""
    with tarfile.open(target, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)


class TrainSupervisor(RunSupervisor):
    """Runs one claimed train assignment (see the module doc)."""

    give_back_on_agent_stop = True  # the agent stopping is no fault of the job

    def __init__(
        self, *, node_env: dict[str, str] | None = None, address: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.address = address  # a gang's: this node's address (None: found from the server)
        # Settings of this node for the trainer (TANDEM_MODEL_DIR…), beside those
        # passed through from the agent's environment.
        self.node_env = dict(node_env or {})
        # Reports go out one at a time, in order: the supervisor's renewals and the
        # output reader's flush before an upload share this lock.
        self._report_lock = threading.Lock()
        self.artifacts: Path | None = None
        self.work_dir: Path | None = None

    def _report(self) -> dict[str, Any] | None:
        with self._report_lock:
            return super()._report()

    def _url(self, url: str) -> str:
        """A signed URL as the server gave it: a path on the server (joined with the
        agent's --server), or an absolute URL (a bucket store's)."""
        return urllib.parse.urljoin(self.client.server.rstrip("/") + "/", url)

    # -- before the trainer starts --

    def _setup(self) -> tuple[list[str], Path, dict[str, str]]:
        spec = self.claim.get("spec") or {}
        downloads = self.claim.get("downloads") or {}
        work = dict(spec.get("work") or {})
        if not work.get("job_id"):
            raise DriverError("the train spec has no work spec")
        work_dir = self._prepare({})
        self.work_dir = work_dir
        self.artifacts = work_dir / "artifacts"
        self.artifacts.mkdir()
        data = work_dir / "data"
        data.mkdir()
        try:
            for name in ("training_file", "validation_file"):
                item = downloads.get(name)
                if item is None:
                    work[name] = None
                    continue
                target = data / Path(str(item["name"])).name
                _download(self._url(str(item["url"])), target)
                work[name] = str(target)
            checkpoint = downloads.get("checkpoint")
            if checkpoint is not None:
                self._unpack_checkpoint(checkpoint, work_dir)
            if work.get("init_from"):
                source = downloads.get("init_from")
                if source is None:
                    raise TransferError("the checkpoint to start from was not offered")
                target = work_dir / Path(str(source["name"])).name
                self._fetch_tar(source, work_dir, target)
                work["init_from"] = str(target)
                logger.info(
                    "run %s: starting from %s (step %s)",
                    self.assignment_id,
                    source.get("source"),
                    source.get("step"),
                )
        except TransferError as exc:
            raise DriverError(f"could not fetch the run's inputs: {exc}") from None
        (work_dir / "spec.json").write_text(json.dumps(work))
        gpus = max(1, len(self.claim.get("gpu_uuids") or []))
        launch = ["-m", "runtime.launch", "--spec", "spec.json", "--artifacts", "artifacts"]
        env = self._env(work_dir, {})
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        for name in PASS_THROUGH_ENV:
            if os.environ.get(name):
                env[name] = os.environ[name]
        env.update(self.node_env)
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        if int(self.claim.get("gang_size") or 1) > 1:
            rendezvous = self._gang_wait()
            address = self.address or node_address(self.client.server)
            command = [
                *torchrun,
                "--nnodes",
                str(rendezvous["nnodes"]),
                "--nproc-per-node",
                str(gpus),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                str(rendezvous["endpoint"]),
                "--rdzv-id",
                str(rendezvous["id"]),
                # Member 0 hosts the store at the endpoint it offered; the others join.
                "--rdzv-conf",
                f"is_host={1 if rendezvous['host'] else 0}",
                "--local-addr",
                address,
                # A failed worker fails the attempt; the server moves the whole gang on.
                "--max-restarts",
                "0",
                *launch,
            ]
            interface = interface_of(address)
            if interface is not None:
                for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
                    env.setdefault(name, interface)
        elif gpus > 1:
            command = [*torchrun, "--standalone", "--nproc-per-node", str(gpus), *launch]
        else:
            command = [sys.executable, *launch]
        if self.run_as is not None:
            for path in [work_dir, *work_dir.rglob("*")]:
                os.chown(path, self.run_as.uid, self.run_as.gid)
        return command, work_dir, env

    def _gang_wait(self) -> dict[str, Any]:
        """The gang's barrier: re-post the claim with our attempt (each post renews it)
        until every member has claimed and the answer carries the rendezvous."""
        answer = self.claim
        path = f"/api/v1/agent/nodes/{self.node_id}/assignments/{self.assignment_id}/claim"
        while True:
            if answer.get("stop"):
                self.request_stop("the server said stop")
            if self._stop_requested.is_set():
                raise DriverError(f"stopped at the gang's barrier: {self.stop_reason}")
            if answer.get("rendezvous"):
                logger.info("run %s: gang complete: %s", self.assignment_id, answer["rendezvous"])
                return dict(answer["rendezvous"])
            time.sleep(GANG_POLL_SECONDS)
            try:
                answer = self.client.post(path, {"attempt": self.attempt})
            except AgentError as exc:
                if exc.status in (404, 409):
                    self.fenced = True
                    self.request_stop("the server refused this attempt")
                    raise DriverError(f"the gang's barrier: {exc}") from None
                logger.warning("run %s: barrier poll failed: %s", self.assignment_id, exc)
                answer = {}

    def _fetch_tar(self, item: dict[str, Any], work_dir: Path, target: Path) -> None:
        """Download a checkpoint's tar, check its SHA-256 and unpack it into ``target``."""
        archive = work_dir / f"{target.name}.tar"
        _download(self._url(str(item["url"])), archive)
        found = _sha256_file(archive)
        if found != item["sha256"]:
            raise TransferError(f"checkpoint SHA-256 is {found}, {item['sha256']} expected")
        target.mkdir(parents=True)
        with tarfile.open(archive, mode="r:") as tar:
            tar.extractall(target, filter="data")
        archive.unlink()

    def _unpack_checkpoint(self, checkpoint: dict[str, Any], work_dir: Path) -> None:
        assert self.artifacts is not None
        self._fetch_tar(checkpoint, work_dir, self.artifacts / str(checkpoint["key"]))
        logger.info(
            "run %s: resuming from %s (step %s)",
            self.assignment_id,
            checkpoint["key"],
            checkpoint.get("step"),
        )

    # -- while it runs --

    def _on_line(self, stream: str, text: str) -> None:
        if stream == "stdout" and text.startswith("{"):
            try:
                line = json.loads(text)
            except ValueError:
                line = None
            if isinstance(line, dict) and "event" in line:
                try:
                    self._trainer_event(line)
                except (KeyError, TypeError, ValueError) as exc:
                    logger.warning("run %s: unreadable trainer line: %s", self.assignment_id, exc)
                return
        super()._on_line(stream, text)

    def _trainer_event(self, line: dict[str, Any]) -> None:
        event = line["event"]
        if event == "started":
            self.outbox.add(
                {
                    "type": "training_started",
                    "data": {
                        "total_steps": int(line["total_steps"]),
                        "resumed_from_step": int(line["resumed_from"]),
                        "examples": int(line["examples"]),
                        "tokens_per_epoch": int(line["tokens_per_epoch"]),
                        "world_size": int(line["world_size"]),
                        "device": str(line["device"]),
                        "trainable_parameters": int(line["trainable_parameters"]),
                    },
                }
            )
        elif event == "step":
            self.outbox.add(
                {
                    "type": "step",
                    "data": {
                        name: line[name]
                        for name in (
                            "step",
                            "loss",
                            "learning_rate",
                            "tokens_per_second",
                            "eta_seconds",
                        )
                        if name in line
                    },
                }
            )
        elif event == "eval":
            self.outbox.add(
                {
                    "type": "evaluation",
                    "data": {"step": line["step"], "eval_loss": line["eval_loss"]},
                }
            )
        elif event == "checkpoint":
            self._upload(str(line["key"]))
        elif event == "finished":
            for key in (line.get("final"), line.get("merged")):
                if key:
                    self._upload(str(key))

    def _upload(self, key: str) -> None:
        """Pack, declare, PUT and commit ``artifacts/<key>``, retried; a 409 (our
        attempt is no longer current) stops the run."""
        assert self.artifacts is not None and self.work_dir is not None
        self._report()  # the steps before this checkpoint go first
        source = self.artifacts / key
        archive = self.work_dir / f".upload-{os.getpid()}-{threading.get_ident()}.tar"
        base = f"/api/v1/agent/nodes/{self.node_id}/runs/{self.assignment_id}/uploads"
        try:
            pack(source, archive)
            body = {
                "attempt": self.attempt,
                "key": key,
                "sha256": _sha256_file(archive),
                "size": archive.stat().st_size,
            }
            for attempt in range(1, UPLOAD_TRIES + 1):
                if self.fenced or self._stop_requested.is_set():
                    return
                try:
                    declared = self.client.post(base, body)
                    if not declared.get("present"):
                        _put(
                            self._url(str(declared["url"])),
                            archive,
                            headers=dict(declared.get("headers") or {}),
                        )
                    self.client.post(
                        f"{base}/{declared['id']}/commit", {"attempt": self.attempt}, timeout=300
                    )
                    logger.info("run %s: committed %s", self.assignment_id, key)
                    return
                except AgentError as exc:
                    if exc.status == 404 or (exc.status == 409 and "stale_attempt" in str(exc)):
                        self.fenced = True
                        self.request_stop("the server refused this attempt")
                        return
                    logger.warning("run %s: upload of %s: %s", self.assignment_id, key, exc)
                except TransferError as exc:
                    logger.warning("run %s: upload of %s: %s", self.assignment_id, key, exc)
                time.sleep(min(2.0**attempt, 15.0))
            self.request_stop(f"could not upload {key}", by_server=False)
        finally:
            archive.unlink(missing_ok=True)

    def _output_drained(self, handle: RunHandle) -> None:
        """Read the trainer's output to its end (the final model's upload with it),
        renewing the claim meanwhile."""
        readers = getattr(handle, "readers", [])
        last = time.monotonic()
        while any(reader.is_alive() for reader in readers) and not self.fenced:
            for reader in readers:
                reader.join(timeout=self.flush_seconds)
            if time.monotonic() - last >= self.renew_seconds:
                last = time.monotonic()
                self._report()
