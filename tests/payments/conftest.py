"""Stripe for the payments tests.

- ``localstripe``: the real fake server (customers, payment methods, PaymentIntents,
  refunds, balance transactions, signed webhooks), started once per session as a
  subprocess on a free port, in its own temporary directory. localstripe writes its
  store to the fixed path ``/tmp/localstripe.pickle``; the launcher below points
  that at the run's own directory, so parallel runs never share or clobber it.
- ``fake_stripe``: a small HTTP server for what localstripe lacks (Connect accounts
  and account links, transfers, Checkout Sessions, balance transactions of
  transfers). Its answers are Stripe's published example objects
  (``shared/stripe/fixtures3.json``) with our values filled in; it records every
  request (method, path, form parameters, Idempotency-Key) and, like Stripe,
  answers a repeated idempotency key with the first response.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from payments import stripe_client

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "stripe" / "fixtures3.json"
if not FIXTURES.exists():  # the checkout lives beside shared/
    FIXTURES = Path("/work/shared/stripe/fixtures3.json")
WEBHOOK_SECRET = "whsec_test_payments"
SECRET_KEY = "sk_test_payments"

_LAUNCHER = """
import os, pickle, sys
import localstripe.resources as resources
path = os.path.join(os.getcwd(), "localstripe.pickle")
def _load(self):
    try:
        with open(path, "rb") as f:
            old = pickle.load(f)
    except FileNotFoundError:
        return
    self.clear(); self.update(old)
def _dump(self):
    with open(path, "wb") as f:
        pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
resources.Store.try_load_from_disk = _load
resources.Store.dump_to_disk = _dump
from localstripe.server import start
sys.argv = ["localstripe", "--port", sys.argv[1], "--from-scratch"]
start()
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"localstripe exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("localstripe did not start listening")


@dataclass
class LocalStripe:
    url: str
    workdir: Path

    def register_webhook(self, name: str, url: str, secret: str) -> None:
        response = requests.post(
            f"{self.url}/_config/webhooks/{name}", data={"url": url, "secret": secret}, timeout=5
        )
        response.raise_for_status()

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = requests.get(
            f"{self.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
            timeout=5,
        )
        response.raise_for_status()
        return response.json()

    def post(self, path: str, **data: Any) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}{path}",
            data=data,
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
            timeout=5,
        )
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    workdir = tmp_path_factory.mktemp("localstripe")
    port = free_port()
    log = open(workdir / "localstripe.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(port)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_listening(port, process)
        yield LocalStripe(url=f"http://127.0.0.1:{port}", workdir=workdir)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def stripe_on(settings: Any, localstripe: LocalStripe) -> LocalStripe:
    """Payments configured against localstripe."""
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_payments"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = localstripe.url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    stripe_client._client.cache_clear()
    return localstripe


@pytest.fixture
def webhook_secret(settings: Any) -> str:
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return WEBHOOK_SECRET


# --- the fake server for what localstripe lacks ------------------------------------


def _examples() -> dict[str, Any]:
    return json.loads(FIXTURES.read_text())["resources"]


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, str]
    idempotency_key: str | None


@dataclass
class FakeStripe:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    examples: dict[str, Any] = field(default_factory=_examples)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    balance_transactions: list[dict[str, Any]] = field(default_factory=list)
    # destination account id -> (http status, Stripe error body) for a refused transfer
    refuse_transfers_to: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    replies: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def made(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self.counter):06d}"

    def handle(self, method: str, path: str, params: dict[str, str]) -> tuple[int, Any]:
        now = int(time.time())
        if method == "POST" and path == "/v1/accounts":
            account = copy.deepcopy(self.examples["account"])
            account.update(
                id=self._id("acct"),
                type=params.get("type"),
                country=params.get("country"),
                email=params.get("email"),
                charges_enabled=False,
                payouts_enabled=False,
                details_submitted=False,
                metadata={
                    k[len("metadata[") : -1]: v
                    for k, v in params.items()
                    if k.startswith("metadata[")
                },
                created=now,
            )
            self.accounts[account["id"]] = account
            return 200, account
        if method == "GET" and path.startswith("/v1/accounts/"):
            account = self.accounts.get(path.rsplit("/", 1)[1])
            if account is None:
                return 404, _error("invalid_request_error", "No such account")
            return 200, account
        if method == "POST" and path == "/v1/account_links":
            link = copy.deepcopy(self.examples["account_link"])
            link.update(
                created=now,
                expires_at=now + 300,
                url=f"https://connect.stripe.test/setup/{params['account']}/{self._id('link')}",
            )
            return 200, link
        if method == "POST" and path == "/v1/transfers":
            destination = params["destination"]
            if destination in self.refuse_transfers_to:
                return self.refuse_transfers_to[destination]
            transfer = copy.deepcopy(self.examples["transfer"])
            transfer.update(
                id=self._id("tr"),
                amount=int(params["amount"]),
                currency=params["currency"],
                destination=destination,
                transfer_group=params.get("transfer_group"),
                metadata={
                    k[len("metadata[") : -1]: v
                    for k, v in params.items()
                    if k.startswith("metadata[")
                },
                created=now,
            )
            txn = copy.deepcopy(self.examples["balance_transaction"])
            txn.update(
                id=self._id("txn"),
                amount=-transfer["amount"],
                net=-transfer["amount"],
                currency=transfer["currency"],
                created=now,
                available_on=now,
                source=transfer["id"],
                type="transfer",
                reporting_category="transfer",
                description=None,
            )
            transfer["balance_transaction"] = txn["id"]
            self.transfers[transfer["id"]] = transfer
            self.balance_transactions.insert(0, txn)
            return 200, transfer
        if method == "POST" and path == "/v1/checkout/sessions":
            session = copy.deepcopy(self.examples["checkout.session"])
            session_id = self._id("cs_test")
            session.update(
                id=session_id,
                mode=params["mode"],
                customer=params.get("customer"),
                client_reference_id=params.get("client_reference_id"),
                amount_total=int(params["line_items[0][price_data][unit_amount]"]),
                currency=params["line_items[0][price_data][currency]"],
                success_url=params["success_url"],
                cancel_url=params["cancel_url"],
                payment_status="unpaid",
                status="open",
                url=f"https://checkout.stripe.test/c/pay/{session_id}",
                metadata={
                    k[len("metadata[") : -1]: v
                    for k, v in params.items()
                    if k.startswith("metadata[")
                },
                created=now,
            )
            return 200, session
        if method == "POST" and path == "/v1/customers":
            return 200, {"id": self._id("cus"), "object": "customer", "created": now}
        if method == "GET" and path == "/v1/balance_transactions":
            data = self.balance_transactions
            after = params.get("starting_after")
            if after:
                index = next(i for i, t in enumerate(data) if t["id"] == after)
                data = data[index + 1 :]
            limit = int(params.get("limit", 10))
            return 200, {
                "object": "list",
                "url": "/v1/balance_transactions",
                "has_more": len(data) > limit,
                "data": data[:limit],
            }
        return 404, _error("invalid_request_error", f"Unrecognized request URL ({path})")

    def dispatch(self, method: str, path: str, query: str, body: str, key: str | None) -> Any:
        params = dict(parse_qsl(query)) if method == "GET" else dict(parse_qsl(body))
        with self.lock:
            self.requests.append(Recorded(method, path, params, key))
            if key is not None and key in self.replies:
                return self.replies[key]
            status, payload = self.handle(method, path, params)
            reply = (status, json.dumps(payload).encode())
            if key is not None and method == "POST" and status < 500:
                self.replies[key] = reply
            return reply


def _error(kind: str, message: str, code: str = "") -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "code": code or None}}


@pytest.fixture
def fake_stripe(settings: Any) -> Iterator[FakeStripe]:
    server_ref: dict[str, FakeStripe] = {}

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            status, payload = server_ref["fake"].dispatch(
                method, parts.path, parts.query, body, self.headers.get("Idempotency-Key")
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakeStripe(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    server_ref["fake"] = fake
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = fake.url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    stripe_client._client.cache_clear()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        stripe_client._client.cache_clear()


# --- signed events -------------------------------------------------------------------


def signed(event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, at: int | None = None):
    """The raw body and Stripe-Signature header Stripe would send for ``event``,
    signed with the stripe library's own helper."""
    import stripe

    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=at)
    return body.encode(), header


def make_event(event_id: str, event_type: str, obj: dict[str, Any], created: int | None = None):
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created or int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }
