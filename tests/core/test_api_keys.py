"""API keys: hashed at rest, found by prefix, shown once, revoked at once."""

from __future__ import annotations

import hashlib

import pytest
from rest_framework.test import APIClient

from core import selectors, services
from core.models import ApiKey


def test_the_raw_key_is_never_stored(cast):
    created = services.api_key_create(organization=cast.buyer_a, name="ci")

    row = ApiKey.objects.get(pk=created.api_key.pk)
    prefix_part, _, secret = created.raw_key.removeprefix("tdm_").partition("_")
    assert row.prefix == prefix_part
    assert row.hashed_key == hashlib.sha256(created.raw_key.encode()).hexdigest()
    stored = " ".join(
        str(value) for value in ApiKey.objects.filter(pk=row.pk).values().get().values()
    )
    assert secret not in stored
    assert created.raw_key not in stored


def test_a_key_is_found_by_its_prefix_and_only_with_its_secret(cast):
    created = services.api_key_create(organization=cast.buyer_a)
    other = services.api_key_create(organization=cast.buyer_a)

    assert selectors.api_key_for_secret(raw_key=created.raw_key) == created.api_key
    forged = f"tdm_{created.api_key.prefix}_{other.raw_key.rsplit('_', 1)[1]}"
    assert selectors.api_key_for_secret(raw_key=forged) is None
    assert selectors.api_key_for_secret(raw_key=created.raw_key + "x") is None
    assert selectors.api_key_for_secret(raw_key="tdm__" + "x" * 10) is None
    assert selectors.api_key_for_secret(raw_key="not-a-key") is None


def test_using_a_key_sets_last_used_at(cast):
    client = cast.client(cast.buyer_a)
    assert client.api_key.last_used_at is None

    assert client.get("/api/v1/organization").status_code == 200

    client.api_key.refresh_from_db()
    assert client.api_key.last_used_at is not None


@pytest.mark.parametrize(
    "header",
    ["Bearer tdm_nope_nope", "Bearer", "Bearer a b", "Bearer tdm_\u00e9_x", "Basic dXNlcjpwdw=="],
)
def test_bad_credentials_get_401_in_the_error_shape(cast, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/organization")

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] in {"authentication_failed", "not_authenticated"}
    assert error["message"]
    assert response.has_header("WWW-Authenticate")


def test_a_revoked_key_gets_401_at_once(cast):
    admin = cast.client(cast.buyer_a)
    victim = cast.client(cast.buyer_a, role="member")
    assert victim.get("/api/v1/organization").status_code == 200

    revoked = admin.post(f"/api/v1/api-keys/{victim.api_key.pk}/revoke")

    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    response = victim.get("/api/v1/organization")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_a_key_can_revoke_itself(cast):
    admin = cast.client(cast.buyer_a)

    assert admin.post(f"/api/v1/api-keys/{admin.api_key.pk}/revoke").status_code == 200
    assert admin.get("/api/v1/organization").status_code == 401


def test_revoking_twice_keeps_the_first_time(cast):
    admin = cast.client(cast.buyer_a)
    victim = cast.client(cast.buyer_a)
    first = admin.post(f"/api/v1/api-keys/{victim.api_key.pk}/revoke").json()["revoked_at"]

    second = admin.post(f"/api/v1/api-keys/{victim.api_key.pk}/revoke")

    assert second.status_code == 200
    assert second.json()["revoked_at"] == first
