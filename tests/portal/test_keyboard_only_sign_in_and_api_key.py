"""Keyboard only: a person signs in and creates an API key in its dialog with Tab,
typing and Enter, never the mouse."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from core.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)


def focused(page) -> str:
    return page.evaluate(
        "() => { const e = document.activeElement;"
        " const label = e.labels && e.labels[0] ? e.labels[0].innerText : null;"
        " return (label || e.innerText || e.value || '').trim(); }"
    )


def tab_to(page, text: str, *, limit: int = 25) -> None:
    """Press Tab until the focused element is the one named ``text``."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if focused(page).startswith(text):
            return
    raise AssertionError(f"Tab never reached {text!r}; last focus: {focused(page)!r}")


def test_sign_in_and_the_api_key_dialog_work_from_the_keyboard(live_server, page, person):
    who = person("buyer")
    page.goto(live_server.url + "/sign-in/")

    # the email field has the focus from the start
    assert focused(page).startswith("Email")
    page.keyboard.type(who.email)
    tab_to(page, "Password")
    page.keyboard.type(who.password)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/$"))

    tab_to(page, "API keys")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/keys/$"))
    # The URL changes before portal.js has run; without it the button opens the key
    # page of its own (the no-JavaScript path) rather than the dialog.
    page.wait_for_load_state("load")
    tab_to(page, "Create API key")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    # the dialog takes the focus: its first field
    assert focused(page).startswith("Name")
    page.keyboard.type("keyboard key")
    tab_to(page, "Create key")
    page.keyboard.press("Enter")

    key_field = dialog.get_by_label(re.compile("^Key “keyboard key”"))
    expect(key_field).to_be_focused()
    assert key_field.input_value().startswith("tdm_")
    tab_to(page, "Copy")
    page.keyboard.press("Enter")
    expect(dialog.get_by_role("status")).not_to_be_empty()
    tab_to(page, "Done")
    page.keyboard.press("Enter")
    expect(page.get_by_role("row", name=re.compile("keyboard key"))).to_be_visible()
    assert ApiKey.objects.filter(organization=who.organization, name="keyboard key").exists()
