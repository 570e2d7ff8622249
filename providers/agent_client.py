"""The agent's side of the HTTP API: JSON over HTTP with the node's agent key, and
the one error every part of the agent catches. Standard library only, like the
rest of the agent."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

AGENT_VERSION = "0.1.0"


class AgentError(RuntimeError):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Client:
    """JSON over HTTP with a Bearer key."""

    server: str
    key: str
    timeout: float = 10.0

    def post(
        self, path: str, body: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        return self.send("POST", path, body, timeout=timeout)

    def get(self, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        return self.send("GET", path, None, timeout=timeout)

    def send(
        self, method: str, path: str, body: dict[str, Any] | None, *, timeout: float | None
    ) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {self.key}",
            "User-Agent": f"tandem-agent/{AGENT_VERSION}",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310  (the operator gives the URL)
            self.server.rstrip("/") + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=timeout or self.timeout
            ) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                message = f"{error['code']}: {error['message']}"
            except Exception:
                message = str(exc)
            raise AgentError(f"{path}: HTTP {exc.code} {message}", status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise AgentError(f"{path}: cannot reach {self.server}: {exc}") from None
