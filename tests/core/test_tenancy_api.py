"""The tenancy API, tried by the right caller, the wrong tenant, the wrong role and
nobody at all."""

from __future__ import annotations

import pytest

from core.models import ApiKey

ENDPOINTS = [
    ("get", "/api/v1/organization"),
    ("get", "/api/v1/api-keys/"),
    ("post", "/api/v1/api-keys/"),
    ("post", "/api/v1/api-keys/{id}/revoke"),
]


def test_organization_is_the_callers_own(cast):
    for org in cast.orgs:
        body = cast.client(org, role="member").get("/api/v1/organization").json()
        assert body["id"] == org.pk
        assert body["name"] == org.name
        assert body["kind"] == org.kind
        assert body["is_operator"] is org.is_operator


def test_finance_of_the_operator_sees_the_operator(cast):
    body = cast.finance.get("/api/v1/organization").json()

    assert body["id"] == cast.operator.pk and body["is_operator"] is True


def test_list_shows_only_own_keys_and_never_a_hash(cast):
    a = cast.client(cast.buyer_a, role="member")
    cast.client(cast.buyer_b)  # a key in another organization

    response = a.get("/api/v1/api-keys/")

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == [a.api_key.pk]
    assert set(results[0]) == {
        "id",
        "name",
        "role",
        "scope",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
    }
    assert a.api_key.hashed_key not in response.content.decode()
    assert a.raw_key not in response.content.decode()


def test_list_pages_with_limit_and_cursor(cast):
    admin = cast.client(cast.buyer_a)
    for n in range(4):
        admin.post("/api/v1/api-keys/", {"name": f"k{n}"}, format="json")

    first = admin.get("/api/v1/api-keys/?limit=3").json()
    second = admin.get(first["next"])

    names = [r["name"] for r in first["results"]] + [r["name"] for r in second.json()["results"]]
    assert names == ["k3", "k2", "k1", "k0", "cast admin"]
    assert second.json()["next"] is None


def test_limit_is_capped_at_200(cast):
    admin = cast.client(cast.buyer_a)
    ApiKey.objects.bulk_create(
        ApiKey(organization=cast.buyer_a, prefix=f"p{n:05d}", hashed_key=f"h{n:063d}")
        for n in range(205)
    )

    response = admin.get("/api/v1/api-keys/?limit=1000")

    assert response.status_code == 200
    assert len(response.json()["results"]) == 200


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=ten", "cursor=garbage"])
def test_bad_page_parameters_are_400_naming_the_parameter(cast, query):
    response = cast.client(cast.buyer_a).get(f"/api/v1/api-keys/?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["details"]["parameter"] == query.split("=")[0]


def test_admin_creates_a_key_shown_once_that_works(cast):
    admin = cast.client(cast.provider_a)

    response = admin.post("/api/v1/api-keys/", {"name": "ci", "role": "finance"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "ci" and body["role"] == "finance"
    assert body["key"].startswith(f"tdm_{body['prefix']}_")
    assert response["Cache-Control"] == "no-store"
    row = ApiKey.objects.get(pk=body["id"])
    assert row.organization == cast.provider_a
    assert body["key"] not in str(row.__dict__)
    # shown once: the list never shows it again
    assert body["key"] not in admin.get("/api/v1/api-keys/").content.decode()
    admin.credentials(HTTP_AUTHORIZATION=f"Bearer {body['key']}")
    assert admin.get("/api/v1/organization").json()["id"] == cast.provider_a.pk


def test_a_new_key_defaults_to_the_member_role(cast):
    body = cast.client(cast.buyer_a).post("/api/v1/api-keys/", {}, format="json").json()

    assert body["role"] == "member" and body["name"] == "default"


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"role": "owner"}, "role"), ({"name": "x" * 101}, "name"), ({"name": ""}, "name")],
)
def test_bad_create_input_is_400_naming_the_field(cast, payload, field):
    response = cast.client(cast.buyer_a).post("/api/v1/api-keys/", payload, format="json")

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]["fields"]


@pytest.mark.parametrize("role", ["member", "finance"])
def test_non_admins_cannot_create_or_revoke_keys(cast, role):
    caller = cast.client(cast.buyer_a, role=role)
    target = cast.client(cast.buyer_a, role="member")
    before = ApiKey.objects.count()

    created = caller.post("/api/v1/api-keys/", {"name": "sneaky"}, format="json")
    revoked = caller.post(f"/api/v1/api-keys/{target.api_key.pk}/revoke")

    assert created.status_code == revoked.status_code == 403
    assert created.json()["error"]["code"] == "forbidden"
    assert ApiKey.objects.count() == before
    target.api_key.refresh_from_db()
    assert target.api_key.revoked_at is None


def test_another_tenants_key_cannot_be_revoked(cast):
    victim = cast.client(cast.provider_b)
    attacker = cast.client(cast.provider_a)

    response = attacker.post(f"/api/v1/api-keys/{victim.api_key.pk}/revoke")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    victim.api_key.refresh_from_db()
    assert victim.api_key.revoked_at is None
    assert victim.get("/api/v1/organization").status_code == 200


def test_the_operators_admin_cannot_revoke_a_tenants_key_either(cast):
    victim = cast.client(cast.buyer_b)

    response = cast.client(cast.operator).post(f"/api/v1/api-keys/{victim.api_key.pk}/revoke")

    assert response.status_code == 404
    victim.api_key.refresh_from_db()
    assert victim.api_key.revoked_at is None


@pytest.mark.parametrize("api_key_id", ["999999999", "99999999999999999999999"])
def test_revoking_an_unknown_id_is_404(cast, api_key_id):
    response = cast.client(cast.buyer_a).post(f"/api/v1/api-keys/{api_key_id}/revoke")

    assert response.status_code == 404


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_anonymous_gets_401_in_the_error_shape(cast, method, url):
    target = cast.client(cast.buyer_a)
    before = list(ApiKey.objects.values_list("pk", "revoked_at").order_by("pk"))

    response = getattr(cast.anonymous, method)(url.format(id=target.api_key.pk), format="json")

    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert response.json()["error"]["code"] == "not_authenticated"
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert list(ApiKey.objects.values_list("pk", "revoked_at").order_by("pk")) == before


def test_unsupported_methods_get_405_with_the_true_allow_header(cast):
    response = cast.client(cast.buyer_a).delete("/api/v1/api-keys/")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response["Allow"] == "GET, POST, OPTIONS"
