"""Integers at the edge (core.converters): a path id, a query filter, a header or a
body field past what the database holds is refused where it enters, with a 4xx that
names it, never handed to PostgreSQL or SQLite."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework import serializers
from rest_framework.test import APIClient

from core import services
from core.converters import BIGINT_MAX, DatabaseIdConverter, parse_whole_number, query_int
from providers import services as supply
from providers.models import Gpu
from tests.providers.conftest import inventory

pytestmark = pytest.mark.django_db

PAST_BIGINT = str(2**63)  # 9223372036854775808
HUGE = "9" * 23


# --- the one check ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", 1),
        ("007", 7),
        (str(BIGINT_MAX), BIGINT_MAX),
        (PAST_BIGINT, None),
        (HUGE, None),
        ("0" * 40 + "5", 5),
        ("0", None),
        ("-1", None),
        ("", None),
        (" 7", None),
        ("7 ", None),
        ("1_000", None),
        ("+7", None),
        ("١٢", None),  # Arabic-Indic digits: int() takes them
        ("²", None),  # a superscript: isdigit() says yes, int() says no
        ("1e3", None),
        ("9" * 5000, None),  # past Python's int() digit limit
    ],
)
def test_parse_whole_number_takes_only_ascii_digits_in_range(raw, expected):
    assert parse_whole_number(raw, low=1, high=BIGINT_MAX) == expected


def test_parse_whole_number_takes_a_minus_only_where_the_range_is_negative():
    assert parse_whole_number("-5", low=-10, high=10) == -5
    assert parse_whole_number("-11", low=-10, high=10) is None
    assert parse_whole_number("--5", low=-10, high=10) is None


def test_the_path_converter_matches_ids_the_database_can_hold():
    converter = DatabaseIdConverter()

    assert converter.to_python(str(BIGINT_MAX)) == BIGINT_MAX
    for raw in (PAST_BIGINT, HUGE, "0"):
        with pytest.raises(ValueError):
            converter.to_python(raw)
    assert reverse("order-detail", kwargs={"order_id": 12}) == "/api/v1/orders/12"


def test_no_url_pattern_takes_an_unbounded_int():
    from django.urls import get_resolver

    def walk(patterns, prefix=""):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if hasattr(pattern, "url_patterns"):
                yield from walk(pattern.url_patterns, route)
            else:
                yield route

    routes = list(walk(get_resolver().url_patterns))

    assert any("<id:" in route for route in routes)
    assert [route for route in routes if "<int:" in route] == []


# --- path ids ----------------------------------------------------------------------


@pytest.mark.parametrize("raw", [PAST_BIGINT, HUGE, "0"])
def test_an_out_of_range_path_id_is_a_json_404(cast, raw):
    buyer = cast.client(cast.buyer_a)

    for url in (f"/api/v1/orders/{raw}", f"/api/v1/leases/{raw}", f"/api/v1/invoices/{raw}"):
        response = buyer.get(url)

        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "not_found"
        assert response.json()["error"]["details"] == {"path": url}


def test_an_out_of_range_node_id_on_the_heartbeat_is_a_json_404(cast):
    supply.site_create(organization=cast.provider_a, name="s", region="us-east", country="US")
    node = supply.node_register(
        organization=cast.provider_a,
        hostname="n1",
        site_name="s",
        inventory=inventory(1, prefix="GPU-edge"),
    )
    agent = cast.agent(cast.provider_a, node)
    url = f"/api/v1/agent/nodes/{HUGE}/heartbeat"

    response = agent.post(url, {"gpus": []}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["details"] == {"path": url}
    # the node's own id still works
    assert (
        agent.post(
            f"/api/v1/agent/nodes/{node.pk}/heartbeat", {"gpus": []}, format="json"
        ).status_code
        == 200
    )


# --- query filters -----------------------------------------------------------------


@pytest.mark.parametrize("raw", [PAST_BIGINT, HUGE, "-1", "0", "١٢", "²", "1.0", ""])
def test_an_id_filter_past_the_database_is_a_400_naming_the_parameter(cast, raw):
    buyer = cast.client(cast.buyer_a)

    response = buyer.get("/api/v1/leases/", {"order": raw})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"] == {"parameter": "order"}
    assert error["message"].startswith("order must be an order id")


@pytest.mark.parametrize("raw", [PAST_BIGINT, "²"])
def test_the_invoice_filter_of_payments_is_a_400_naming_it(cast, raw):
    buyer = cast.client(cast.buyer_a)

    response = buyer.get("/api/v1/billing/invoice-payments", {"invoice": raw})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"parameter": "invoice"}


def test_an_id_filter_in_range_still_filters(cast):
    buyer = cast.client(cast.buyer_a)

    response = buyer.get("/api/v1/leases/", {"order": str(BIGINT_MAX)})

    assert response.status_code == 200
    assert response.json()["results"] == []


def test_query_int_names_the_parameter_and_its_range(rf):
    from rest_framework.request import Request

    from core.errors import InvalidInput

    request = Request(rf.get("/", {"minutes": "١٢"}))

    with pytest.raises(InvalidInput) as raised:
        query_int(request, "minutes", low=1, high=1440, default=60)

    assert raised.value.details == {"parameter": "minutes"}
    assert "from 1 to 1440" in raised.value.message
    assert query_int(Request(rf.get("/")), "minutes", low=1, high=1440, default=60) == 60


# --- the X-Organization header -------------------------------------------------------


@pytest.fixture
def member(cast) -> APIClient:
    """A portal user in two organizations, logged in (a session, not an API key)."""
    user = User.objects.create_user("two-orgs", password="not-used-here")
    services.membership_create(user=user, organization=cast.buyer_a, role="admin")
    services.membership_create(user=user, organization=cast.buyer_b, role="member")
    client = APIClient()
    client.force_login(user)
    return client


@pytest.mark.parametrize("raw", [PAST_BIGINT, HUGE, "-1", "0", "abc", "١٢", "1 2"])
def test_a_malformed_x_organization_is_a_400_naming_the_header(member, raw):
    response = member.get("/api/v1/leases/", HTTP_X_ORGANIZATION=raw)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"] == {"header": "X-Organization"}
    assert "X-Organization" in error["message"]


def test_a_malformed_x_organization_on_v1_names_the_header_as_the_param(member):
    response = member.get("/v1/models", HTTP_X_ORGANIZATION=HUGE)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Organization"


def test_x_organization_still_picks_one_of_the_users_organizations(cast, member):
    ok = member.get("/api/v1/organization", HTTP_X_ORGANIZATION=str(cast.buyer_b.pk))
    other = member.get("/api/v1/organization", HTTP_X_ORGANIZATION=str(cast.provider_a.pk))
    unnamed = member.get("/api/v1/organization")

    assert ok.status_code == 200
    assert ok.json()["id"] == cast.buyer_b.pk
    assert other.status_code == 401
    assert "X-Organization" in other.json()["error"]["message"]
    assert unnamed.status_code == 401  # two organizations: the header must say which


# --- bodies ------------------------------------------------------------------------------


def test_a_drf_integer_field_without_bounds_takes_the_64_bit_range():
    field = serializers.IntegerField()

    assert field.run_validation(BIGINT_MAX) == BIGINT_MAX
    assert field.run_validation(-(2**63)) == -(2**63)
    for value in (2**63, -(2**63) - 1, int(HUGE)):
        with pytest.raises(serializers.ValidationError):
            field.run_validation(value)


def test_a_field_that_names_its_own_bounds_keeps_them():
    field = serializers.IntegerField(min_value=0, max_value=10)

    assert (field.min_value, field.max_value) == (0, 10)


def test_a_body_integer_past_the_database_is_a_400_naming_the_field(cast):
    buyer = cast.client(cast.buyer_a)

    response = buyer.post(
        "/api/v1/prices/fine-tune-estimate",
        {"model": "x", "training_type": "lora", "training_tokens": 2**64},
        format="json",
    )

    assert response.status_code == 400
    assert "training_tokens" in response.json()["error"]["details"]["fields"]


# --- a GPU of another organization --------------------------------------------------------


def test_registering_another_organizations_gpu_does_not_say_whose_it_is(cast):
    supply.site_create(organization=cast.provider_b, name="b", region="us-east", country="US")
    theirs = supply.node_register(
        organization=cast.provider_b,
        hostname="b-node",
        site_name="b",
        inventory=inventory(1, prefix="GPU-theirs"),
    )
    gpu = Gpu.objects.get(node=theirs)
    agent = cast.agent(cast.provider_a)

    response = agent.post(
        "/api/v1/agent/nodes/register",
        {
            "hostname": "a-node",
            "gpus": [{"index": 0, "uuid": gpu.uuid, "name": gpu.name, "memory_total_mib": 81559}],
        },
        format="json",
    )

    assert response.status_code == 409
    text = response.content.decode().lower()
    assert f"gpu {gpu.uuid.lower()} cannot be registered" in text
    for telling in ("another", "organization", "elsewhere", "already", "registered to", "b-node"):
        assert telling not in text
    assert Gpu.objects.get(pk=gpu.pk).node_id == theirs.pk


@pytest.mark.parametrize("raw", ["²", "\u0661", "-1", str(2**31), HUGE])
def test_a_bad_checkpoint_step_on_v1_is_a_400_naming_it(cast, raw):
    from marketplace.workloads.models import File, FineTuneJob

    training = File.objects.create(
        public_id="file-edge", organization=cast.buyer_a, purpose="fine-tune", filename="t.jsonl"
    )
    job = FineTuneJob.objects.create(
        public_id="ft-edge",
        organization=cast.buyer_a,
        model="tandem/tiny-llama",
        training_file=training,
        seed=1,
        status="succeeded",
        currency="USD",
    )
    buyer = cast.client(cast.buyer_a)

    response = buyer.get("/v1/finetune/download", {"ft_id": job.public_id, "checkpoint_step": raw})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "checkpoint_step"
