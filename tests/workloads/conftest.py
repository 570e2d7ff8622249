"""Fixtures for the /v1/ API: datasets on disk, files in a per-test storage root,
the runtime's ports, and the official clients pointed at a live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

SAMPLE_CHAT = [
    {
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a + b}."},
        ]
    }
    for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9)]
]


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@pytest.fixture
def chat_bytes() -> bytes:
    return jsonl(SAMPLE_CHAT)


@pytest.fixture
def invalid_bytes() -> bytes:
    # line 3: the assistant speaks twice in a row
    records = [
        *SAMPLE_CHAT[:2],
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "assistant", "content": "Again."},
            ]
        },
    ]
    return jsonl(records)


@pytest.fixture(autouse=True)
def _storage(tmp_path: Path, settings) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    root = tmp_path / "files"
    settings.WORKLOADS_STORAGE_DIR = root
    yield root


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    def _write(name: str, content: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content)
        return path

    return _write


def openai_client(live_server, raw_key: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{live_server.url}/v1", api_key=raw_key, max_retries=0, timeout=60)


def together_client(live_server, raw_key: str):  # type: ignore[no-untyped-def]
    from together import Together

    return Together(base_url=live_server.url, api_key=raw_key, max_retries=0, timeout=60)


@pytest.fixture
def demo_node_agent(live_server, tmp_path: Path, settings):  # type: ignore[no-untyped-def]
    """``start(provider)``: the demo node's agent (``python -m providers.agent``, its own
    process group) against the live server, once the provider's demo supply is loaded
    (tests.workloads.market.provider_with_capacity). Fine-tunes train in it and
    inference deployments serve from it (the engine loads there: a first request
    waits up to the longest start timeout), on the node their lease names, as on a
    provider's machine; stopped when the test ends."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from providers import demo

    started: list[subprocess.Popen[bytes]] = []
    root = Path(__file__).resolve().parents[2]

    settings.INFERENCE_START_TIMEOUT_SECONDS = settings.INFERENCE_START_TIMEOUT_MAX_SECONDS

    def start(provider) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
        key_file = demo.agent_key_file(provider=provider, path=tmp_path / "demo-agent.key")
        log = tmp_path / "demo-agent.log"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "providers.agent",
                "--server",
                live_server.url,
                "--key-file",
                str(key_file),
                "--inventory",
                str(demo.INVENTORY),
                "--work-dir",
                str(tmp_path / "agent-work"),
                "--wait",
                "5",
            ],
            cwd=root,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "TANDEM_MODEL_DIR": str(settings.RUNTIME_MODEL_DIR),
                "OMP_NUM_THREADS": "1",
            },
        )
        started.append(process)
        deadline = time.monotonic() + 30
        while "registered as" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the demo node's agent did not register"
            time.sleep(0.05)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
