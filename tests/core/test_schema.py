from __future__ import annotations

from io import StringIO

import pytest
import yaml
from django.core.management import call_command


def test_the_schema_generates_without_warnings_and_validates():
    out = StringIO()

    # --fail-on-warn raises on any warning; --validate checks it against OpenAPI 3.
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)

    schema = yaml.safe_load(out.getvalue())
    paths = schema["paths"]
    assert set(paths["/api/v1/api-keys/"]) == {"get", "post"}
    assert paths["/api/v1/api-keys/"]["post"]["operationId"] == "api_keys_create"
    assert paths["/api/v1/api-keys/"]["get"]["operationId"] == "api_keys_list"
    assert "post" in paths["/api/v1/api-keys/{api_key_id}/revoke"]
    assert "get" in paths["/api/v1/organization"]
    assert "hashed_key" not in out.getvalue()


@pytest.mark.django_db
def test_the_schema_is_served(client):
    response = client.get("/api/schema/")

    assert response.status_code == 200
    assert b"/api/v1/organization" in response.content
