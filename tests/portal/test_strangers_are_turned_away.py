"""A signed-out visit is sent to sign-in (and back after it); another organization's
keys and members answer 404 in the browser, as if they did not exist."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from core import services
from core.models import ApiKey, Membership
from tests.portal.conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_signed_out_visit_goes_to_sign_in_and_back(live_server, page, person):
    who = person("buyer")

    page.goto(live_server.url + "/team/")

    expect(page).to_have_url(re.compile(r"/sign-in/\?next=/team/$"))
    page.get_by_label("Email").fill(who.email)
    page.get_by_label("Password").fill(who.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/team/$"))
    expect(page.get_by_role("cell", name=f"{who.email} (you)")).to_be_visible()


def test_another_orgs_keys_and_members_answer_404(live_server, page, person):
    mine, theirs = person("buyer"), person("buyer")
    their_key = services.api_key_create(organization=theirs.organization, name="theirs")
    sign_in(page, live_server, mine)
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    headers = {"X-CSRFToken": token}

    for path in (
        f"/keys/{their_key.api_key.pk}/revoke",
        f"/team/{theirs.membership.pk}/remove",
        f"/team/{theirs.membership.pk}/role",
    ):
        response = page.request.post(
            live_server.url + path, headers=headers, form={"role": "member"}
        )
        assert response.status == 404, path
        assert "Not found" in response.text()

    assert ApiKey.objects.get(pk=their_key.api_key.pk).revoked_at is None
    assert Membership.objects.get(pk=theirs.membership.pk).role == "admin"
    # ... while the same request on one's own key goes through
    own = services.api_key_create(organization=mine.organization, name="mine")
    response = page.request.post(f"{live_server.url}/keys/{own.api_key.pk}/revoke", headers=headers)
    assert response.ok
    assert ApiKey.objects.get(pk=own.api_key.pk).revoked_at is not None
