"""Fixtures for the /v1/ API: datasets on disk, files in a per-test storage root,
the runtime's ports, and the official clients pointed at a live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import ports

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


@pytest.fixture(autouse=True)
def _price_book() -> None:
    """The price book registers itself in billing's AppConfig once that lands; until
    then the real implementation is put in place here."""
    if not ports.registered("pricebook"):
        from billing.pricebook import PriceBookPort

        ports.register("pricebook", PriceBookPort())


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
