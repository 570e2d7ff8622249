from __future__ import annotations

import pytest

from core.models import ApiKey


@pytest.mark.parametrize(
    "url",
    [
        "/admin/core/apikey/",
        "/admin/core/apikey/{key}/change/",
        "/admin/core/organization/{org}/change/",
        "/admin/core/membership/",
        "/admin/core/idempotentrequest/",
    ],
)
def test_admin_pages_render_without_key_hashes(cast, admin_client, url):
    client = cast.client(cast.buyer_a)

    response = admin_client.get(url.format(key=client.api_key.pk, org=cast.buyer_a.pk))

    assert response.status_code == 200
    assert client.api_key.hashed_key not in response.content.decode()


def test_keys_cannot_be_added_in_the_admin(admin_client, db):
    assert admin_client.get("/admin/core/apikey/add/").status_code == 403


def test_the_admin_revokes_keys(cast, admin_client):
    client = cast.client(cast.buyer_a)

    response = admin_client.post(
        "/admin/core/apikey/",
        {"action": "revoke", "_selected_action": [client.api_key.pk]},
    )

    assert response.status_code == 302
    assert ApiKey.objects.get(pk=client.api_key.pk).revoked_at is not None
    assert client.get("/api/v1/organization").status_code == 401
