"""A person turns on two-factor sign-in: reads the secret off the set-up page into
their authenticator (here django-otp's own TOTP, as an app computes it), confirms
with a code, keeps the backup codes; signs out, and signing in then asks for a code
after the password. A wrong code is refused beside the field; a backup code also
signs in, once."""

from __future__ import annotations

import re
from base64 import b32decode

import pytest
from django_otp.oath import totp
from playwright.sync_api import expect

from tests.portal.conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def app_code(secret: str, steps_ahead: int = 0) -> str:
    """What an authenticator app holding ``secret`` shows (``steps_ahead`` steps on)."""
    key = b32decode(secret + "=" * (-len(secret) % 8))
    return f"{totp(key, step=30, t0=-30 * steps_ahead):06d}"


def sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_load_state()


def test_a_person_turns_on_two_factor_and_signs_in_with_a_code(live_server, page, person):
    buyer = person("buyer")
    sign_in(page, live_server, buyer)

    # they set it up: the secret (beside the QR code) into their app, then its code
    page.get_by_role("link", name="Two-factor").click()
    expect(page.locator("[data-two-factor]")).to_contain_text("off")
    page.get_by_role("link", name="Set up two-factor sign-in").click()
    expect(page.get_by_role("img", name=re.compile("QR code"))).to_be_visible()
    secret = page.locator("[data-totp-secret]").inner_text()
    page.get_by_role("textbox", name="Code").fill(app_code(secret))
    page.get_by_role("button", name="Confirm and turn on").click()
    codes = page.locator("[data-backup-codes] li").all_inner_texts()
    assert len(codes) == 10
    page.get_by_role("link", name="Done").click()
    expect(page.locator("[data-two-factor]")).to_contain_text("10 unused backup codes")

    # signing in now takes the password, then the app's code
    sign_out(page)
    sign_in(page, live_server, buyer)
    expect(page).to_have_url(re.compile(r"/sign-in/code$"))
    expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
    page.get_by_role("textbox", name="Code").fill(
        app_code(secret, 1)
    )  # the set-up used this step's
    page.get_by_role("button", name="Verify and sign in").click()
    expect(page).to_have_url(re.compile(r"/console/$"))

    # a wrong code is refused beside the field; a backup code signs in instead
    sign_out(page)
    sign_in(page, live_server, buyer)
    page.get_by_role("textbox", name="Code").fill(
        "000000" if app_code(secret, 1) != "000000" else "111111"
    )
    page.get_by_role("button", name="Verify and sign in").click()
    expect(page.locator("#id_code_error")).to_contain_text("not the current code")
    expect(page.get_by_role("textbox", name="Code")).to_have_attribute("aria-invalid", "true")
    page.get_by_role("textbox", name="Code").fill(codes[0])
    page.get_by_role("button", name="Verify and sign in").click()
    expect(page).to_have_url(re.compile(r"/console/$"))
    page.goto(live_server.url + "/two-factor/")
    expect(page.locator("[data-two-factor]")).to_contain_text("9 unused backup codes")
