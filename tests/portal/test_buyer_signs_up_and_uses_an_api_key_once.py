"""A buyer signs up, finds the welcome credits on the dashboard, creates an API key,
sees it once, calls the API with it, and revokes it."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from core.followers import followers_run_until_idle
from core.models import Organization
from core.money import Money
from ledger import selectors as books
from pricing.welcome import welcome_credits

pytestmark = pytest.mark.django_db(transaction=True)


def call_api(base: str, path: str, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(  # noqa: S310 (http to the live server)
        base + path, headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (the live server)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_buyer_signs_up_sees_welcome_credits_and_uses_an_api_key_once(live_server, page):
    # given a visitor on the front page
    page.goto(live_server.url + "/")
    expect(page).to_have_url(re.compile(r"/sign-in/$"))
    page.get_by_role("link", name="Create an account").click()

    # when they sign up as a buyer
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_label("Organization name").fill("Analytical Engines")
    page.get_by_role("radio", name=re.compile("Buyer")).check()
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/console/$"))
    expect(page.get_by_role("heading", name="Console")).to_be_visible()

    # then billing's follower of new organizations grants the welcome credits (the
    # follower process does this within a second under `make run`)
    followers_run_until_idle([welcome_credits])
    page.reload()
    organization = Organization.objects.get(name="Analytical Engines")
    credit = books.credit_overview(organization=organization, currency="USD")
    assert credit.available_micros > 0
    expect(page.locator('[data-figure="available"]')).to_have_text(
        str(Money(credit.available_micros, "USD"))
    )
    expect(page.locator('[data-figure="runway"]')).to_have_text("No recent spend")

    # when they create an API key in the dialog
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_text("No API keys yet.")).to_be_visible()
    page.get_by_role("link", name="Create API key").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Name").fill("notebook")
    dialog.get_by_label("Role").select_option("member")
    dialog.get_by_role("button", name="Create key").click()

    # then the key is shown once, and it works
    key_field = dialog.get_by_label(re.compile("^Key “notebook”"))
    expect(key_field).to_have_value(re.compile(r"^tdm_[0-9a-f]{12}_\S+$"))
    key = key_field.input_value()
    status, body = call_api(live_server.url, "/api/v1/organization", key)
    assert (status, body["name"]) == (200, "Analytical Engines")

    dialog.get_by_role("link", name="Done").click()
    row = page.get_by_role("row", name=re.compile("notebook"))
    expect(row).to_contain_text("active")
    assert key not in page.content()  # never shown again

    # when they revoke it, the API refuses it at once
    row.get_by_role("button", name=re.compile("^Revoke key notebook")).click()
    expect(page.get_by_role("status")).to_contain_text("Revoked the key “notebook”")
    expect(page.get_by_role("row", name=re.compile("notebook"))).to_contain_text("revoked")
    status, body = call_api(live_server.url, "/api/v1/organization", key)
    assert status == 401
