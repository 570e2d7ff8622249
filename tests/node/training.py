"""Helpers of the training-on-the-node tests: the tiny model's directory shared with
the agents, a fine-tune job made through the workloads services, and the platform's
background work (matching, followers, the reaper) running in a thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import close_old_connections, connection

from core.followers import follower_run_once, registered
from core.models import Organization
from marketplace.workloads import files as workload_files
from marketplace.workloads import jobs
from marketplace.workloads.models import FineTuneJob


def chat_records(count: int) -> bytes:
    records = [
        {
            "messages": [
                {"role": "user", "content": f"What is {a} plus {a + 1}?"},
                {"role": "assistant", "content": f"{a + a + 1}."},
            ]
        }
        for a in range(count)
    ]
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def finetune_job(
    buyer: Organization, *, examples: int, epochs: int, batch_size: int, checkpoints: int
) -> FineTuneJob:
    file = workload_files.file_upload(
        organization=buyer,
        purpose="fine-tune",
        filename="train.jsonl",
        chunks=[chat_records(examples)],
    )
    return jobs.finetune_job_create(
        organization=buyer,
        request=jobs.JobRequest(
            model="tandem/tiny-llama",
            training_file=file.public_id,
            n_epochs=epochs,
            batch_size=batch_size,
            n_checkpoints=checkpoints,
            seed=7,
        ),
    )


def platform_step() -> None:
    from marketplace.assignments.services import assignments_reap
    from marketplace.services import matching_round

    matching_round(wait=False)
    for follower in registered():
        while follower_run_once(follower):
            pass
    assignments_reap()


@contextmanager
def platform_running(period: float = 0.1) -> Iterator[None]:
    """Matching, followers and the reaper in a thread until the block ends (no
    worker: nothing trains in this process)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                close_old_connections()
                platform_step()
                stop.wait(period)
        except BaseException as error:  # surfaced to the test when the block ends
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
    if failures:
        raise failures[0]


def process_parents(pid: int) -> list[int]:
    """``pid``'s ancestors, nearest first (from /proc)."""
    chain = []
    while pid > 1:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            break
        pid = int(fields[1])
        chain.append(pid)
    return chain


def agent_env(model_root: Path) -> dict[str, str]:
    """What an agent's trainer needs on these test nodes: the tiny model's directory."""
    return {"TANDEM_MODEL_DIR": str(model_root), "OMP_NUM_THREADS": "1"}


def trainer_processes() -> dict[int, int]:
    """pid -> parent pid of every runtime.launch process on this machine (torchrun's
    own process names runtime.launch too)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"runtime.launch" in cmdline:
            parents = process_parents(int(entry.name))
            if parents:
                found[int(entry.name)] = parents[0]
    return found


def training_events_of(job_id: str, kind: str) -> list[dict]:
    from runtime.selectors import training_events

    return [e.payload for e in training_events(job_id=job_id) if e.type == kind]


def billed_steps(job_id: str) -> list[str]:
    from metering.models import UsageEvent

    return list(
        UsageEvent.objects.filter(subject_id=job_id, type="tokens.training")
        .order_by("event_id")
        .values_list("event_id", flat=True)
    )
