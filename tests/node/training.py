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
from marketplace.workloads import services as workloads
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
    file = workloads.file_upload(
        organization=buyer,
        purpose="fine-tune",
        filename="train.jsonl",
        chunks=[chat_records(examples)],
    )
    return workloads.finetune_job_create(
        organization=buyer,
        request=workloads.JobRequest(
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
