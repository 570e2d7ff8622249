"""Body size caps and malformed bodies: answered in the error shape, never a 500."""

from __future__ import annotations

import json

import pytest

from core.models import ApiKey


@pytest.fixture
def small_bodies(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048


def test_an_oversized_json_body_is_413(cast, small_bodies):
    admin = cast.client(cast.buyer_a)
    before = ApiKey.objects.count()
    body = json.dumps({"name": "big", "padding": "x" * 4096})

    response = admin.post("/api/v1/api-keys/", body, content_type="application/json")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert ApiKey.objects.count() == before


def test_a_body_just_under_the_cap_is_accepted(cast, small_bodies):
    admin = cast.client(cast.buyer_a)
    body = json.dumps({"name": "fits", "padding": "x" * 1900})
    assert len(body) <= 2048

    assert admin.post("/api/v1/api-keys/", body, content_type="application/json").status_code == 201


def test_an_oversized_form_body_is_413_too(cast, small_bodies):
    admin = cast.client(cast.buyer_a)

    response = admin.post(
        "/api/v1/api-keys/",
        "name=big&padding=" + "x" * 4096,
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 413


@pytest.mark.parametrize(
    "body", ['{"name": ', "{'name': 'single quotes'}", "\xff\xfe", "[" * 100_000 + "]" * 100_000]
)
def test_malformed_json_is_400_parse_error(cast, body):
    admin = cast.client(cast.buyer_a)
    payload = body.encode("latin-1") if body.startswith("\xff") else body

    response = admin.post("/api/v1/api-keys/", payload, content_type="application/json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "parse_error"
    assert error["message"].startswith("JSON parse error")


def test_a_json_list_instead_of_an_object_is_400_invalid(cast):
    response = cast.client(cast.buyer_a).post("/api/v1/api-keys/", [1, 2], format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_an_unknown_media_type_is_415(cast):
    response = cast.client(cast.buyer_a).post(
        "/api/v1/api-keys/", "name: x", content_type="text/yaml"
    )

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
