"""A deployment's engine on its leased node: one process, started by the node's agent
(providers/agent_serve.py) with ``CUDA_VISIBLE_DEVICES`` set to the leased GPUs.

    python -m runtime.serve --spec spec.json

No database, no Django settings and no network: the agent holds the agent key and
relays. The spec names the model (``base_model``, and ``adapter_path``: a trained
adapter merged at load) and ``max_batch``. The engine (runtime/inference.py) is
loaded once and kept for the life of the process — the per-deployment engine of the
node — and batches whatever requests are pending, as it always has.

Lines in, on stdin (one JSON object each):
- ``{"id", "kind": "generate", "stream", "tokens", "request": {...}}``: a
  completion; ``request`` has the fields of core.ports.GenerationRequest; ``stream``
  false: its text comes back in one reply when it finishes; ``tokens`` true (a
  stream only): each chunk also carries the tokens sampled for it;
- ``{"id", "kind": "embed", "texts": [...]}``: embeddings;
- ``{"cancel": id}``: nobody waits for it any more: stop spending on it.

Lines out, on stdout: ``{"event": "ready", ...}`` once the engine has loaded; then
replies, each naming its ``request``: ``accepted`` (the request passed the engine's
checks and joined the queue), chunks ``{"text", "finish_reason"}`` (the last has a
finish reason; with ``tokens`` asked, also ``"tokens": [{"id", "text", "logprob",
"special"}]``, the tokens sampled since the previous chunk, in order),
``{"vectors"}``, or ``{"error": {"status", "code", "message", "field"}}``.
Diagnostics (each batch's size among them) go to stderr. The process ends when stdin
closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.errors import InvalidInput

_out = threading.Lock()


def emit_stdout(line: dict[str, Any]) -> None:
    text = json.dumps(line, separators=(",", ":"))
    with _out:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def log(message: str) -> None:
    with _out:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def _error(request_id: str, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, InvalidInput):
        details = exc.details or {}
        return {
            "request": request_id,
            "error": {
                "status": 400,
                "code": exc.code,
                "message": exc.message,
                "field": str(details.get("field") or ""),
            },
        }
    log(f"request {request_id} failed: {type(exc).__name__}: {exc}")
    return {
        "request": request_id,
        "error": {"status": 500, "code": "generation_failed", "message": type(exc).__name__},
    }


class Server:
    """Requests into the engine, replies out through ``emit`` (stdout by default)."""

    def __init__(self, engine: Any, emit: Callable[[dict[str, Any]], None] = emit_stdout) -> None:
        self.engine = engine
        self.emit = emit
        self.live: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.embedder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="embed")

    def handle(self, line: dict[str, Any]) -> None:
        if "cancel" in line:
            with self.lock:
                request = self.live.get(str(line["cancel"]))
            if request is not None:
                request.cancelled = True
            return
        request_id = str(line["id"])
        if line.get("kind") == "embed":
            self.embedder.submit(self._embed, request_id, line.get("texts"))
            return
        stream = line.get("stream") is not False
        tokens = stream and line.get("tokens") is True
        self._generate(request_id, line.get("request") or {}, stream=stream, tokens=tokens)

    def _generate(
        self, request_id: str, given: dict[str, Any], *, stream: bool, tokens: bool = False
    ) -> None:
        from runtime.inference import SamplingParams
        from runtime.structured import Constraint

        try:
            schema = given.get("json_schema")
            constraint = (
                Constraint(
                    schema=schema,
                    field=str(given.get("json_schema_field") or "response_format"),
                    strict=bool(given.get("json_schema_strict", True)),
                )
                if schema is not None
                else None
            )
            params = SamplingParams(
                max_tokens=given.get("max_tokens", 256),
                temperature=given.get("temperature", 1.0),
                top_p=given.get("top_p", 1.0),
                stop=tuple(given.get("stop") or ()),
                seed=given.get("seed"),
            )
            request = self.engine.submit(
                prompt=given.get("prompt"),
                messages=given.get("messages"),
                params=params,
                request_id=request_id,
                constraint=constraint,
                tools=given.get("tools"),
                report_tokens=tokens,
            )
        except Exception as exc:
            self.emit(_error(request_id, exc))
            return
        with self.lock:
            self.live[request_id] = request
        self.emit({"request": request_id, "accepted": True})
        threading.Thread(
            target=self._relay_chunks,
            args=(request_id, request),
            kwargs={"stream": stream},
            daemon=True,
        ).start()

    def _relay_chunks(self, request_id: str, request: Any, *, stream: bool) -> None:
        """The request's chunks as the engine decides them; for a request that is not
        streamed, one reply with the whole text when it finishes (nothing reads the
        pieces: fewer replies to carry)."""
        pieces: list[str] = []
        try:
            for chunk in self.engine.chunks(request):
                if not stream and chunk.finish_reason is None:
                    pieces.append(chunk.text)
                    continue
                reply: dict[str, Any] = {
                    "request": request_id,
                    "text": "".join(pieces) + chunk.text,
                    "finish_reason": chunk.finish_reason,
                }
                if chunk.tokens:
                    reply["tokens"] = [
                        {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special}
                        for t in chunk.tokens
                    ]
                self.emit(reply)
        except Exception as exc:
            self.emit(_error(request_id, exc))
        finally:
            with self.lock:
                self.live.pop(request_id, None)

    def _embed(self, request_id: str, texts: Any) -> None:
        try:
            result = self.engine.embed(texts)
        except Exception as exc:
            self.emit(_error(request_id, exc))
            return
        self.emit({"request": request_id, "vectors": result.vectors, "finish_reason": "stop"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.serve")
    parser.add_argument("--spec", type=Path, required=True, help="the serve spec as JSON")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())

    from runtime.inference import Engine

    engine = Engine(
        model=str(spec["base_model"]),
        adapter_path=spec.get("adapter_path") or None,
        deployment_id=str(spec.get("deployment_id") or ""),
        max_batch=int(spec.get("max_batch") or 16),
        on_batch=lambda size: log(f"engine batch: {size} requests"),
    )
    server = Server(engine)
    emit_stdout({"event": "ready", "model": engine.model_name, "device": str(engine.device)})
    for raw in sys.stdin:
        raw = raw.strip()
        if not raw:
            continue
        try:
            server.handle(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log(f"unreadable request line: {exc}")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
