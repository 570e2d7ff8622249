"""Errors no view answers (no route, a crash, a bad Host, a bad body Django parses, a
failed CSRF check) are answered in each surface's own JSON shape: core.errors' under
/api/, OpenAI's under /v1/; HTML only elsewhere (the admin). The suite runs with
DEBUG=0, as production does."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client

from tests.core.edge_urls import SECRET

pytestmark = pytest.mark.django_db

EDGE_URLS = "tests.core.edge_urls"


def _api_error(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def _openai_error(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    return error


def test_the_suite_runs_without_debug():
    assert settings.DEBUG is False


@pytest.mark.parametrize(
    "url", ["/api/v1/no-such-thing", "/api/v1/leases/7/nothing", "/api/nothing", "/api/v1/"]
)
def test_an_unknown_api_url_is_a_json_404(url):
    response = Client().get(url)

    assert response.status_code == 404
    error = _api_error(response)
    assert error["code"] == "not_found"
    assert error["details"] == {"path": url}


@pytest.mark.parametrize("url", ["/v1/no-such-thing", "/v1/fine_tuning/jobs/x/nothing", "/v1/"])
def test_an_unknown_v1_url_is_a_404_in_openais_shape(url):
    response = Client().get(url)

    assert response.status_code == 404
    error = _openai_error(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "not_found"
    assert url in error["message"]


def test_an_unknown_url_elsewhere_is_still_html():
    response = Client().get("/no-such-page")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_a_head_request_to_an_unknown_api_url_is_a_404_too():
    assert Client().head("/api/v1/no-such-thing").status_code == 404


@pytest.mark.urls(EDGE_URLS)
@pytest.mark.parametrize("url", ["/api/v1/test/crash", "/api/v1/test/plain-crash"])
def test_a_crash_under_api_is_a_json_500_without_the_traceback(url):
    client = Client(raise_request_exception=False)

    response = client.get(url, HTTP_X_REQUEST_ID="req-500-a")

    assert response.status_code == 500
    error = _api_error(response)
    assert error["code"] == "internal_error"
    assert error["details"] == {"request_id": "req-500-a"}
    assert "req-500-a" in error["message"]
    assert SECRET.encode() not in response.content
    assert b"Traceback" not in response.content
    assert b"RuntimeError" not in response.content


@pytest.mark.urls(EDGE_URLS)
def test_a_crash_under_v1_is_a_500_in_openais_shape():
    response = Client(raise_request_exception=False).get("/v1/test/crash")

    assert response.status_code == 500
    error = _openai_error(response)
    assert error["code"] == "internal_error"
    assert error["type"] == "api_error"
    assert SECRET.encode() not in response.content


@pytest.mark.urls(EDGE_URLS)
def test_a_crash_elsewhere_is_djangos_html_500():
    response = Client(raise_request_exception=False).get("/test/crash")

    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
    assert SECRET.encode() not in response.content


@pytest.mark.urls(EDGE_URLS)
def test_permission_denied_by_a_plain_view_is_a_json_403():
    response = Client().get("/api/v1/test/denied")

    assert response.status_code == 403
    error = _api_error(response)
    assert error["code"] == "forbidden"
    assert error["message"] == "members only"


@pytest.mark.parametrize(
    ("url", "shape"), [("/api/v1/leases/", _api_error), ("/v1/models", _openai_error)]
)
def test_a_host_the_server_does_not_serve_is_a_json_400_naming_the_header(url, shape):
    response = Client().get(url, HTTP_HOST="evil.example")

    assert response.status_code == 400
    error = shape(response)
    assert "Host" in error["message"]
    assert b"evil.example" not in response.content
    assert b"ALLOWED_HOSTS" not in response.content


@pytest.mark.urls(EDGE_URLS)
@pytest.mark.parametrize(("url", "shape"), [("/api/v1/test/form", _api_error)])
def test_a_malformed_multipart_body_read_by_django_is_a_json_400(url, shape):
    response = Client().post(
        url, b"--x\r\nnot a part", content_type="multipart/form-data; boundary=\x00"
    )

    assert response.status_code == 400
    error = shape(response)
    assert "multipart" in error["message"]


def test_a_malformed_multipart_body_on_v1_is_a_400_in_openais_shape(cast):
    buyer = cast.client(cast.buyer_a)

    response = buyer.post(
        "/v1/files", b"--x\r\nnot a part", content_type="multipart/form-data; boundary=\x00"
    )

    assert response.status_code == 400
    _openai_error(response)


@pytest.mark.urls(EDGE_URLS)
@pytest.mark.parametrize(
    ("url", "shape"), [("/api/v1/test/form", _api_error), ("/v1/test/form", _openai_error)]
)
def test_a_failed_csrf_check_is_a_json_403(url, shape):
    response = Client(enforce_csrf_checks=True).post(url, {"a": "1"})

    assert response.status_code == 403
    error = shape(response)
    assert "CSRF" in error["message"]


@pytest.mark.parametrize(
    ("method", "url", "shape"),
    [("delete", "/api/v1/leases/", _api_error), ("delete", "/v1/models", _openai_error)],
)
def test_a_method_the_url_does_not_allow_is_a_json_405(cast, method, url, shape):
    buyer = cast.client(cast.buyer_a)

    response = getattr(buyer, method)(url)

    assert response.status_code == 405
    error = shape(response)
    assert error["code"] == "method_not_allowed"
