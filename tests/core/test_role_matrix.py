"""Who may call what: every route under /api/ and /v1/ (walked from the URL conf) ×
every HTTP method its view serves × the cast's callers, against one declared table.

A route missing from ``TABLE`` (or a row for a route that is gone) fails
``test_every_route_has_a_row``, so a new endpoint cannot be forgotten.

"Gets through" means anything but 401 and 403: a caller let in may still get a 400
(an empty body), a 404 (no such object) or a 405. A refused caller gets exactly 401
(anonymous), 403 (wrong role, wrong kind of organization, an agent key outside the
agent API) or 404 (another organization's object: ids leak nothing).

Callers, in the organization of the route's kind (``Row.org``): its admin, member and
finance keys; an agent key (of that org when it is a provider, else provider A's,
bound to the route's node); the admin of another organization of the same kind (for
operator routes, a buyer's admin); anonymous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from core.models import ApiKey

pytestmark = pytest.mark.django_db

ADMIN, MEMBER, FINANCE, AGENT, OTHER, ANON = (
    "admin",
    "member",
    "finance",
    "agent",
    "other",
    "anonymous",
)
CALLERS = (ADMIN, MEMBER, FINANCE, AGENT, OTHER, ANON)
ROLES = frozenset({ADMIN, MEMBER, FINANCE})
WRITERS = frozenset({ADMIN, MEMBER})
PAYERS = frozenset({ADMIN, FINANCE})
ADMINS = frozenset({ADMIN})
THROUGH = "through"  # anything but 401 and 403


@dataclass(frozen=True)
class Row:
    """Who gets through one route and method. ``org``: the kind of organization whose
    callers are tried (provider, buyer, operator). ``other``: what another org's admin
    gets: THROUGH (a list: its own things), 404 (an object of ``org``) or 403.
    ``public``: no key needed (anonymous and agent keys alike)."""

    org: str
    through: frozenset[str] = frozenset()
    other: Any = 403
    public: bool = False
    agent: bool = False  # agent keys get through (the agent API, usage reports)
    extra: dict[str, Any] = field(default_factory=dict)  # caller -> exact status
    query: dict[str, str] = field(default_factory=dict)  # a GET's query string


def provider(through: frozenset[str] = ROLES, other: Any = THROUGH, **kw: Any) -> Row:
    return Row("provider", through, other, **kw)


def buyer(through: frozenset[str] = ROLES, other: Any = THROUGH, **kw: Any) -> Row:
    return Row("buyer", through, other, **kw)


def anyone(through: frozenset[str] = ROLES, other: Any = THROUGH, **kw: Any) -> Row:
    """Any kind of organization (tried as a buyer)."""
    return Row("buyer", through, other, **kw)


def operator_finance() -> Row:
    """Platform-wide books: the operator's finance staff (and its admins)."""
    return Row("operator", PAYERS, 403)


def agent_api(**kw: Any) -> Row:
    return Row("provider", frozenset(), 403, agent=True, **kw)


def public(**kw: Any) -> Row:
    return Row("buyer", ROLES, THROUGH, public=True, **kw)


OPERATOR_FINANCE = operator_finance()

# (route name, method) -> Row. The README's "who" columns, route by route.
TABLE: dict[tuple[str, str], Row] = {
    # documentation: anyone, no key
    ("schema", "GET"): public(),
    ("docs", "GET"): public(),
    # the agent API: agent keys only, each on its own node
    ("agent-node-register", "POST"): agent_api(),
    ("agent-node-heartbeat", "POST"): agent_api(),
    ("agent-node-assignments", "GET"): agent_api(query={"wait": "0"}),  # no long poll
    ("agent-node-assignment-claim", "POST"): agent_api(),
    ("agent-node-run-events", "POST"): agent_api(),
    ("agent-node-run-uploads", "POST"): agent_api(),
    ("agent-node-run-upload-commit", "POST"): agent_api(),
    ("agent-node-serve-requests", "POST"): agent_api(),
    ("agent-node-serve-replies", "POST"): agent_api(),
    # signed URLs: the signature is the credential (a request without one is a 400)
    ("agent-blob", "GET"): public(extra={AGENT: THROUGH}),
    ("agent-blob", "PUT"): public(extra={AGENT: THROUGH}),
    # tenancy
    ("organization-detail", "GET"): anyone(),
    ("api-keys", "GET"): anyone(),
    ("api-keys", "POST"): anyone(ADMINS),
    ("api-key-revoke", "POST"): anyone(ADMINS, other=404),
    # the ledger
    ("accounts", "GET"): anyone(),
    ("account-detail", "GET"): anyone(other=404),
    ("account-credit-limit", "POST"): OPERATOR_FINANCE,
    ("journal", "GET"): anyone(),
    ("journal-adjustments", "POST"): OPERATOR_FINANCE,
    ("trial-balance", "GET"): OPERATOR_FINANCE,
    # prices, invoices, statements
    ("prices", "GET"): public(),
    ("prices-schedule", "GET"): OPERATOR_FINANCE,
    ("prices-schedule", "POST"): OPERATOR_FINANCE,
    ("fine-tune-estimate", "POST"): anyone(),
    ("invoices", "GET"): anyone(),
    ("invoice-draft", "GET"): anyone(),
    ("invoice-job", "POST"): OPERATOR_FINANCE,
    ("invoice-detail", "GET"): anyone(other=404),
    ("invoice-html", "GET"): anyone(other=404),
    ("invoice-pdf", "GET"): anyone(other=404),
    ("invoice-credit-notes", "GET"): anyone(other=404),
    ("invoice-credit-notes", "POST"): OPERATOR_FINANCE,
    ("invoice-finalize", "POST"): OPERATOR_FINANCE,
    ("invoice-void", "POST"): OPERATOR_FINANCE,
    ("invoice-mark-uncollectible", "POST"): OPERATOR_FINANCE,
    ("invoice-mark-paid", "POST"): OPERATOR_FINANCE,
    ("billing-profile", "GET"): anyone(other=404),
    ("billing-profile", "PUT"): OPERATOR_FINANCE,
    ("statements", "GET"): provider(),
    ("statement", "GET"): provider(),
    # payments and payouts
    ("top-ups", "GET"): anyone(),
    ("top-ups", "POST"): buyer(PAYERS),
    ("top-ups-checkout", "POST"): buyer(PAYERS),
    ("top-up-detail", "GET"): anyone(other=404),
    ("top-up-refunds", "POST"): OPERATOR_FINANCE,
    ("payment-methods", "POST"): buyer(PAYERS),
    ("auto-recharge", "GET"): anyone(),
    ("auto-recharge", "PUT"): buyer(PAYERS),
    ("invoice-payments", "GET"): anyone(),
    ("invoice-payments-retry", "POST"): OPERATOR_FINANCE,
    ("invoice-payment-detail", "GET"): anyone(other=404),
    ("invoice-payment-refunds", "POST"): OPERATOR_FINANCE,
    ("invoice-collection", "GET"): anyone(other=404),
    ("stripe-reconciliation", "GET"): OPERATOR_FINANCE,
    # Stripe's signature is the authority: no key is read, so an agent key is ignored
    ("stripe-webhook", "POST"): public(extra={AGENT: THROUGH}),
    ("connected-account", "GET"): provider(),
    ("connected-account", "POST"): provider(ADMINS),
    ("connected-account-link", "POST"): provider(ADMINS),
    ("payouts", "GET"): provider(),
    ("payout-detail", "GET"): provider(other=404),
    # finance exports
    ("finance-exports", "GET"): OPERATOR_FINANCE,
    ("finance-exports", "POST"): OPERATOR_FINANCE,
    ("finance-export-detail", "GET"): OPERATOR_FINANCE,
    ("finance-export-download", "GET"): OPERATOR_FINANCE,
    ("finance-reconciliation", "GET"): OPERATOR_FINANCE,
    ("finance-report-monthly", "GET"): OPERATOR_FINANCE,
    ("finance-revenue-chart", "GET"): OPERATOR_FINANCE,
    # the marketplace
    ("orders", "GET"): buyer(),
    ("orders", "POST"): buyer(WRITERS),
    ("order-detail", "GET"): buyer(other=404),
    ("order-cancel", "POST"): buyer(WRITERS, other=404),
    ("leases", "GET"): buyer(),
    ("lease-detail", "GET"): buyer(other=404),
    ("provider-leases", "GET"): provider(),
    ("market", "GET"): anyone(),
    ("lease-runs", "GET"): buyer(other=404),
    ("lease-runs", "POST"): buyer(WRITERS),  # the body is checked first
    ("lease-run-detail", "GET"): buyer(other=404),
    ("lease-run-logs", "GET"): buyer(other=404),
    ("lease-run-cancel", "POST"): buyer(WRITERS, other=404),
    # usage: admins and members send (and node agents), everyone reads
    ("usage-batch", "POST"): provider(WRITERS, agent=True),
    ("usage-events", "GET"): anyone(),
    ("usage-meter", "GET"): anyone(),
    ("usage-delivered", "GET"): provider(),
    # the provider portal: any role reads, admins write
    ("provider-sites", "GET"): provider(),
    ("provider-sites", "POST"): provider(ADMINS),
    ("provider-site-detail", "GET"): provider(other=404),
    ("provider-nodes", "GET"): provider(),
    ("provider-node-detail", "GET"): provider(other=404),
    ("provider-node-telemetry", "GET"): provider(other=404),
    ("provider-offers", "GET"): provider(),
    ("provider-offers", "POST"): provider(ADMINS),
    ("provider-offer-detail", "GET"): provider(other=404),
    ("provider-offer-pause", "POST"): provider(ADMINS, other=404),
    ("provider-offer-resume", "POST"): provider(ADMINS, other=404),
    ("provider-offer-reprice", "POST"): provider(ADMINS),  # the body is checked first
    ("provider-offer-withdraw", "POST"): provider(ADMINS, other=404),
    ("provider-utilization", "GET"): provider(),
    ("provider-reliability", "GET"): provider(),
    ("provider-gpu-models", "GET"): provider(),
    ("provider-agent-keys", "GET"): provider(),
    ("provider-agent-keys", "POST"): provider(ADMINS),
    # /v1/: buyers' keys; any role reads, admins and members start work
    ("files", "GET"): buyer(),
    ("files", "POST"): buyer(WRITERS),
    ("file-detail", "GET"): buyer(other=404),
    ("file-detail", "DELETE"): buyer(WRITERS, other=404),
    ("file-content", "GET"): buyer(other=404),
    # the signed URL is the authority: no key is read
    ("file-upload-content", "PUT"): public(extra={AGENT: THROUGH}),
    ("file-preprocess", "POST"): buyer(WRITERS, other=404),
    ("openai-jobs", "GET"): buyer(),
    ("openai-jobs", "POST"): buyer(WRITERS),
    ("openai-job", "GET"): buyer(other=404),
    ("openai-job-cancel", "POST"): buyer(WRITERS, other=404),
    ("openai-job-events", "GET"): buyer(other=404),
    ("openai-job-checkpoints", "GET"): buyer(other=404),
    ("together-jobs", "GET"): buyer(),
    ("together-jobs", "POST"): buyer(WRITERS),
    ("together-estimate-price", "POST"): buyer(),
    ("together-model-limits", "GET"): buyer(),
    ("together-job", "GET"): buyer(other=404),
    ("together-job-cancel", "POST"): buyer(WRITERS, other=404),
    ("together-job-events", "GET"): buyer(other=404),
    ("together-job-checkpoints", "GET"): buyer(other=404),
    ("together-download", "GET"): buyer(),  # ?ft_id= is checked first
    ("chat-completions", "POST"): buyer(WRITERS),
    ("completions", "POST"): buyer(WRITERS),
    ("embeddings", "POST"): buyer(WRITERS),
    ("models", "GET"): buyer(),
    ("model-detail", "GET"): buyer(),
    ("model-detail", "DELETE"): buyer(WRITERS, other=404),
    ("together-job", "DELETE"): buyer(WRITERS, other=404),
    ("together-job-metrics", "GET"): buyer(other=404),
    # Together's platform: an organization is a project; clusters are orders
    ("together-whoami", "GET"): anyone(),
    ("together-project-models", "GET"): buyer(other=404),
    ("together-project-model", "GET"): buyer(other=404),
    ("together-supported-models", "GET"): buyer(),
    ("together-clusters", "GET"): buyer(),
    ("together-clusters", "POST"): buyer(WRITERS),
    ("together-cluster", "GET"): buyer(other=404),
    ("together-cluster", "PUT"): buyer(WRITERS, other=404),
    ("together-cluster", "DELETE"): buyer(WRITERS, other=404),
    ("together-regions", "GET"): buyer(),
    ("together-billing-usage", "GET"): buyer(),
    # dedicated endpoints: hardware from the market; endpoints in the caller's project
    ("together-instance-types", "GET"): buyer(),
    ("together-instance-type", "GET"): buyer(),
    ("together-endpoints", "GET"): buyer(other=404),
    ("together-endpoints", "POST"): buyer(WRITERS, other=404),
    ("together-endpoint", "GET"): buyer(other=404),
    ("together-endpoint", "PATCH"): buyer(WRITERS, other=404),
    ("together-endpoint", "DELETE"): buyer(WRITERS, other=404),
    ("together-endpoint-deployments", "GET"): buyer(other=404),
    ("together-endpoint-deployments", "POST"): buyer(WRITERS, other=404),
    ("together-endpoint-deployment", "GET"): buyer(other=404),
    ("together-endpoint-deployment", "PATCH"): buyer(WRITERS, other=404),
    ("together-endpoint-deployment", "DELETE"): buyer(WRITERS, other=404),
    # OpenAI batches (on interruptible capacity)
    ("batches", "GET"): buyer(),
    ("batches", "POST"): buyer(WRITERS),
    ("batch", "GET"): buyer(other=404),
    ("batch-cancel", "POST"): buyer(WRITERS, other=404),
}


# --- the URL conf -----------------------------------------------------------------


def _walk(patterns: list[Any], prefix: str = "") -> Any:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.name, pattern.callback


def _methods(callback: Any) -> list[str]:
    """The methods a route serves: core.routing.by_method's views, or the view's."""
    by_method = getattr(callback, "method_views", None)
    if by_method:
        return sorted(by_method)
    view = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return [m.upper() for m in ("get", "post", "put", "patch", "delete") if hasattr(view, m)]


def routes() -> list[tuple[str, str, str]]:
    """(route name, method, route) for every pattern under /api/, /v1/ and Together's
    /v2/ and /v3/."""
    found = []
    for route, name, callback in _walk(get_resolver().url_patterns):
        if route.startswith(("api/", "v1/", "v2/", "v3/")):
            assert name, f"route {route} has no name: the table is keyed by name"
            found += [(name, method, route) for method in _methods(callback)]
    return found


ROUTES = routes()


def test_every_route_has_a_row():
    served = {(name, method) for name, method, _ in ROUTES}
    assert sorted(served - set(TABLE)) == [], "routes without a row in TABLE"
    assert sorted(set(TABLE) - served) == [], "rows in TABLE for routes that are gone"


# --- the callers ------------------------------------------------------------------


@pytest.fixture
def world(cast):
    """One object of each kind the routes name, in the orgs whose callers are tried."""
    from providers import services as supply
    from providers.models import AgentKey

    site = supply.site_create(
        organization=cast.provider_a, name="Matrix", region="us-east", country="US"
    )
    node = supply.node_register(
        organization=cast.provider_a,
        hostname="matrix-node",
        site_name="Matrix",
        inventory={
            "driver_version": "",
            "cuda_version": "",
            "gpus": [
                {"index": 0, "uuid": "GPU-matrix-0", "name": "NVIDIA H100 80GB HBM3"}
                | {"memory_total_mib": 81559}
            ],
        },
    )
    offer = supply.offer_create(
        organization=cast.provider_a,
        node_id=node.pk,
        gpu_model="h100-sxm-80gb",
        gpu_count=1,
        price_per_gpu_hour_micros=1_000_000,
        kind="on_demand",
    )
    key = cast.client(cast.buyer_a, role="member").api_key
    return {
        "node": node,
        "site": site,
        "offer": offer,
        "api_key": key,
        "agent_node": lambda agent: AgentKey.objects.filter(api_key=agent.api_key).update(
            node=node
        ),
    }


ORGS = {"provider": "provider_a", "buyer": "buyer_a", "operator": "operator"}
OTHER_ORGS = {"provider": "provider_b", "buyer": "buyer_b", "operator": "buyer_a"}


def _callers(cast: Any, world: dict[str, Any], row: Row) -> dict[str, Any]:
    org = getattr(cast, ORGS[row.org])
    agent = cast.agent(org if org.is_provider else cast.provider_a)
    world["agent_node"](agent)
    return {
        ADMIN: cast.client(org, role="admin"),
        MEMBER: cast.client(org, role="member"),
        FINANCE: cast.client(org, role="finance"),
        AGENT: agent,
        OTHER: cast.client(getattr(cast, OTHER_ORGS[row.org]), role="admin"),
        ANON: cast.anonymous,
    }


_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def _url(route: str, world: dict[str, Any], row: Row) -> str:
    """The route with its parameters filled: the org's own objects where the world has
    them, otherwise ids that name nothing."""
    values = {
        "node_id": world["node"].pk,
        "site_id": world["site"].pk,
        "offer_id": world["offer"].pk,
        "api_key_id": world["api_key"].pk,
        "period": "2026-11",
        "model": "tandem/tiny-llama",
    }

    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name in values:
            return str(values[name])
        if name == "organization_id":
            return str(world["org_id"])
        return "999999" if match.group(1) in (None, "int", "id") else "nothing-999999"

    return "/" + _PARAM.sub(fill, route)


def _expected(row: Row, caller: str) -> Any:
    if caller in row.extra:
        return row.extra[caller]
    if caller == ANON:
        return THROUGH if row.public else 401
    if caller == AGENT:
        return THROUGH if row.agent else 403
    if caller == OTHER:
        return row.other if not row.public else THROUGH
    return THROUGH if caller in row.through else 403


@pytest.mark.parametrize(
    ("name", "method", "route"), ROUTES, ids=[f"{m} {n}" for n, m, _ in ROUTES]
)
def test_each_caller_gets_what_the_table_says(cast, world, name, method, route):
    row = TABLE.get((name, method))
    if row is None:
        pytest.fail(f"{method} {route} ({name}) has no row in TABLE")
    org = getattr(cast, ORGS[row.org])
    world["org_id"] = org.pk
    if name == "api-key-revoke":  # an own-org key, so the other org's admin gets 404
        world["api_key"] = cast.client(org, role="member").api_key
    url = _url(route, world, row)
    callers = _callers(cast, world, row)

    got = {}
    for caller in CALLERS:
        client = callers[caller]
        body = row.query if method == "GET" else {}
        response = getattr(client, method.lower())(url, body, format="json")
        got[caller] = response.status_code
    wrong = {}
    for caller, status in got.items():
        want = _expected(row, caller)
        ok = status not in (401, 403) if want == THROUGH else status == want
        if not ok:
            wrong[caller] = f"got {status}, want {want}"
    assert wrong == {}, f"{method} {url}: {wrong} (all: {got})"


def test_agent_keys_are_agent_scoped_in_the_database(cast):
    agent = cast.agent(cast.provider_a)
    assert ApiKey.objects.get(pk=agent.api_key.pk).scope == "agent"
    assert ApiKey.objects.get(pk=cast.client(cast.provider_a).api_key.pk).scope == "org"
