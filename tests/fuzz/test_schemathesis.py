"""The whole OpenAPI schema (drf-spectacular's ``/api/schema/``) fuzzed by schemathesis,
as a buyer, a provider, the operator's finance staff, a node's agent and anonymously,
through Django's WSGI app.

Every operation must answer without a server error, with a status the schema declares,
in the content type it declares and, for JSON, in the shape it declares. Path
parameters are either generated or, half the time, the ids of real objects of a small
world built once for the module (an organization with a node and an offer, a buyer's
order and its lease, a month's invoices, a file), so operations reach real rows and not
only 404s.

Bounded to fit the suite: a few examples per operation (``MAX_EXAMPLES``), no
deadline, a fixed seed and derandomized generation so every run sends the same
requests. Each operation's test runs in a transaction rolled back at its end; the world
is committed once and flushed when the module ends, as a transactional test's data is.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

MAX_EXAMPLES = 8
SEED = 18

# The checks the schema is held to; the others (e.g. negative_data_rejection) judge
# the API's strictness, not the schema's truth.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)

# Operations not fuzzed, each with its reason. Keyed by operation id. Nothing here
# trains a model or calls Stripe: creating a fine-tune job only books the work (a
# node's agent trains it), and Stripe is not configured in the suite, so payments
# answer their documented 503 payments_unavailable at once.
EXCLUDED: dict[str, str] = {
    # A signed URL's PUT (no API key): without the token every request is the same
    # 404; tests/workloads covers the signed upload.
    "v1_files_upload_update": "signed upload URL, no API key",
}

# Operations that cannot pass yet, each with who is changing what they answer.
PENDING: dict[str, str] = {}


def _documenting(raw: dict[str, Any], status: str) -> list[str]:
    return [
        operation["operationId"]
        for methods in raw["paths"].values()
        for operation in methods.values()
        if status in operation.get("responses", {})
    ]


def _config(raw: dict[str, Any]) -> schemathesis.Config:
    checks: dict[str, Any] = {"enabled": False}
    checks.update({name: {"enabled": True} for name in CHECKS})
    # A 503 an operation documents (Stripe not configured here: payments_unavailable;
    # no GPUs to start a model: model_unavailable) is an answer, not a server error.
    documented_503 = {
        "include-operation-id": _documenting(raw, "503"),
        "checks": {
            **checks,
            "not_a_server_error": {
                "enabled": True,
                "expected-statuses": ["2XX", "3XX", "4XX", 503],
            },
        },
    }
    return schemathesis.Config.from_dict(
        {
            "operations": [documented_503],
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "checks": checks,
            "phases": {
                "examples": {"enabled": True},
                "fuzzing": {"enabled": True},
                "coverage": {"enabled": False},
                "stateful": {"enabled": False},
            },
        }
    )


def _raw_schema() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


RAW_SCHEMA = _raw_schema()
schema = schemathesis.openapi.from_dict(RAW_SCHEMA, config=_config(RAW_SCHEMA)).exclude(
    operation_id=[*EXCLUDED, *PENDING]
)

# Real ids by path parameter name, filled by the ``world`` fixture.
REAL: dict[str, Any] = {}


def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    if not path_parameters:
        return st.just(path_parameters)
    real = {name: REAL.get(name, value) for name, value in path_parameters.items()}
    return st.sampled_from([path_parameters, real])


schema.hook(flatmap_path_parameters)


class World:
    stored: dict[Path, bytes]

    def __init__(self) -> None:
        from core import services as core_services
        from invoicing.drafts import invoice_draft_current
        from marketplace import services as market
        from marketplace.models import Lease, Order
        from tests.conftest import Cast
        from tests.invoicing.world import settle
        from tests.marketplace.conftest import fund, healthy_node, offer

        cast = Cast()
        self.cast = cast
        self.keys = {
            "buyer": core_services.api_key_create(
                organization=cast.buyer_a, name="fuzz buyer", role="admin"
            ).raw_key,
            "provider": core_services.api_key_create(
                organization=cast.provider_a, name="fuzz provider", role="admin"
            ).raw_key,
            "finance": core_services.api_key_create(
                organization=cast.operator, name="fuzz finance", role="finance"
            ).raw_key,
        }
        node = healthy_node(cast.provider_a, "fuzz-1")
        self.keys["agent"] = cast.agent(cast.provider_a, node).raw_key
        an_offer = offer(node, price=2_000_000)
        fund(cast.buyer_a, 1_000_000_000)
        buyer = cast.client(cast.buyer_a)
        placed, ended = (
            buyer.post(
                "/api/v1/orders/",
                {
                    "gpus_per_node": 1,
                    "gpu_models": ["h100-sxm-80gb"],
                    "limit_price_per_gpu_hour": "3.00",
                    "duration_seconds": 3600,
                },
                format="json",
                HTTP_IDEMPOTENCY_KEY=key,
            )
            for key in ("fuzz-order-1", "fuzz-order-2")
        )
        assert placed.status_code == ended.status_code == 201, (placed.content, ended.content)
        market.matching_round()
        lease = Lease.objects.get(order_id=placed.json()["id"])
        # The second order's lease, ended, charges the buyer: this month's draft invoice.
        now = timezone.now() + timedelta(minutes=10)
        market.order_cancel(order=Order.objects.get(pk=ended.json()["id"]), now=now)
        settle()  # rate and accrue the lease's usage
        period = now.date().replace(day=1)
        invoice = invoice_draft_current(organization=cast.buyer_a, period=period, now=now)
        assert invoice is not None
        uploaded = buyer.post(
            "/v1/files",
            {"purpose": "fine-tune", "file": _jsonl("fuzz.jsonl")},
            format="multipart",
        )
        assert uploaded.status_code == 200, uploaded.content
        REAL.update(
            {
                "node_id": node.pk,
                "offer_id": an_offer.pk,
                "site_id": node.site_id,
                "order_id": placed.json()["id"],
                "lease_id": lease.pk,
                "invoice_id": invoice.pk,
                "organization_id": cast.buyer_a.pk,
                "period": period.strftime("%Y-%m"),
                "file_id": uploaded.json()["id"],
                "model": "meta-llama/Llama-3.2-1B-Instruct",
            }
        )


def _jsonl(name: str) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    rows = (
        b'{"messages": [{"role": "user", "content": "hi"}, '
        b'{"role": "assistant", "content": "hello"}]}\n'
    )
    return SimpleUploadedFile(name, rows * 4, content_type="application/jsonl")


@pytest.fixture(scope="module")
def world(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    storage = tmp_path_factory.mktemp("fuzz-files")
    with django_db_blocker.unblock(), override_settings(WORKLOADS_STORAGE_DIR=storage):
        try:
            built = World()
            # Files' bytes are not rolled back with a test's transaction: kept here
            # and put back before each test (a fuzzed DELETE removes them).
            files = [path for path in storage.rglob("*") if path.is_file()]
            built.stored = {path: path.read_bytes() for path in files}
            yield built
        finally:
            REAL.clear()
            call_command("flush", verbosity=0, interactive=False)


@pytest.fixture(autouse=True)
def _stored_files(world: World) -> None:
    for path, content in world.stored.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    """Requests go through the WSGI handler, whose request signals would close the
    test's connection (and its transaction) as a real server's do; Django's test
    client disconnects them the same way."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def _call(case: Any, world: World, role: str | None) -> None:
    headers = {"Authorization": f"Bearer {world.keys[role]}"} if role else {}
    # A handler per test, so its middleware reads the test's settings.
    case.call_and_validate(app=WSGIHandler(), headers=headers)


@schema.parametrize()
@FUZZ_SETTINGS
@pytest.mark.django_db
def test_as_a_buyer(case: Any, world: World) -> None:
    _call(case, world, "buyer")


@schema.parametrize()
@FUZZ_SETTINGS
@pytest.mark.django_db
def test_as_a_provider(case: Any, world: World) -> None:
    _call(case, world, "provider")


@schema.parametrize()
@FUZZ_SETTINGS
@pytest.mark.django_db
def test_as_finance(case: Any, world: World) -> None:
    _call(case, world, "finance")


# A node's agent key: the agent API for its own node, a 403 everywhere else.
@schema.parametrize()
@FUZZ_SETTINGS
@pytest.mark.django_db
def test_as_a_nodes_agent(case: Any, world: World) -> None:
    _call(case, world, "agent")


@schema.parametrize()
@FUZZ_SETTINGS
@pytest.mark.django_db
def test_anonymously(case: Any, world: World) -> None:
    _call(case, world, None)
