"""Two-factor sign-in through the pages: the password alone does not sign in a
person who has it on, a wrong or throttled code is refused beside the field, the
password step expires, and set-up, new backup codes and turning it off each need a
current code and the CSRF token."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from core import selectors, services
from portal.views.two_factor import PENDING_SESSION_KEY
from tests.core.test_two_factor import code, unlock

pytestmark = pytest.mark.django_db


def with_two_factor(who) -> TOTPDevice:
    device = services.two_factor_setup_start(user=who.user)
    services.two_factor_setup_confirm(user=who.user, code=code(device))
    device.refresh_from_db()
    return device


def password_step(client: Client, who, next_url: str = "") -> object:
    return client.post(
        reverse("portal:sign-in") + (f"?next={next_url}" if next_url else ""),
        {"username": who.email, "password": who.password},
    )


def test_the_password_alone_does_not_sign_in_a_person_with_two_factor(person):
    buyer = person("buyer")
    device = with_two_factor(buyer)
    client = Client()

    response = password_step(client, buyer, "/console/usage/")

    assert response.status_code == 302 and response["Location"] == reverse("portal:sign-in-code")
    assert client.get(reverse("portal:console")).status_code == 302  # still signed out
    assert "_auth_user_id" not in client.session

    wrong = client.post(reverse("portal:sign-in-code"), {"code": "12"})
    assert wrong.status_code == 400
    assert "6 digits" in wrong.context["form"].errors["code"][0]
    assert 'aria-invalid="true"' in wrong.content.decode()

    right = client.post(reverse("portal:sign-in-code"), {"code": code(device, 1)})
    assert right.status_code == 302 and right["Location"] == "/console/usage/"
    assert client.get(reverse("portal:console")).status_code == 200
    assert PENDING_SESSION_KEY not in client.session


def test_a_person_without_two_factor_signs_in_with_the_password(person):
    buyer = person("buyer")
    client = Client()
    response = password_step(client, buyer)
    assert response.status_code == 302 and response["Location"] != reverse("portal:sign-in-code")
    assert client.get(reverse("portal:console")).status_code == 200


def test_wrong_codes_at_sign_in_are_throttled_beside_the_field(person):
    buyer = person("buyer")
    device = with_two_factor(buyer)
    client = Client()
    password_step(client, buyer)
    wrong_code = f"{(int(code(device, 1)) + 1) % 10**6:06d}"

    wrong = client.post(reverse("portal:sign-in-code"), {"code": wrong_code})
    assert wrong.status_code == 400
    assert "not the current code" in wrong.context["form"].errors["code"][0]
    throttled = client.post(reverse("portal:sign-in-code"), {"code": code(device, 1)})
    assert throttled.status_code == 400
    assert "too many wrong codes" in throttled.context["form"].errors["code"][0]
    assert "_auth_user_id" not in client.session

    unlock(device)
    assert client.post(reverse("portal:sign-in-code"), {"code": code(device, 1)}).status_code == 302


def test_the_password_step_expires(person):
    buyer = person("buyer")
    device = with_two_factor(buyer)
    client = Client()
    password_step(client, buyer)
    session = client.session
    session[PENDING_SESSION_KEY] = {**session[PENDING_SESSION_KEY], "until": time.time() - 1}
    session.save()

    response = client.post(reverse("portal:sign-in-code"), {"code": code(device, 1)})

    assert response.status_code == 302 and response["Location"] == reverse("portal:sign-in")
    assert "_auth_user_id" not in client.session
    assert Client().get(reverse("portal:sign-in-code")).status_code == 302  # nobody pending


def test_set_up_shows_the_secret_and_a_wrong_code_stays_beside_the_field(person):
    buyer = person("buyer")
    client = Client()
    client.force_login(buyer.user)

    page = client.get(reverse("portal:two-factor-setup"))
    assert page.status_code == 200
    device = TOTPDevice.objects.get(user=buyer.user, confirmed=False)
    body = page.content.decode()
    assert page.context["uri"].startswith("otpauth://totp/")
    assert page.context["secret"] in body and "<svg" in body
    assert page["Cache-Control"].startswith("max-age=0")

    wrong = client.post(reverse("portal:two-factor-setup"), {"code": "abc"})
    assert wrong.status_code == 400
    assert list(wrong.context["form"].errors) == ["code"]
    assert not selectors.two_factor_enabled(user=buyer.user)

    done = client.post(reverse("portal:two-factor-setup"), {"code": code(device)})
    assert done.status_code == 200
    assert len(done.context["codes"]) == 10
    assert "no-store" in done["Cache-Control"]
    assert selectors.two_factor_enabled(user=buyer.user)


def test_turning_it_off_and_new_backup_codes_need_a_code_and_the_csrf_token(person):
    buyer = person("buyer")
    device = with_two_factor(buyer)
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(buyer.user)
    off_url = reverse("portal:two-factor-disable")
    assert csrf.post(off_url, {"off-code": code(device, 1)}).status_code == 403
    assert csrf.post(reverse("portal:two-factor-setup"), {"code": "123456"}).status_code == 403
    client = Client()
    client.force_login(buyer.user)

    wrong = client.post(reverse("portal:two-factor-disable"), {"off-code": "000000"})
    assert wrong.status_code == 400
    assert "not the current code" in wrong.context["off_form"].errors["code"][0]
    assert not wrong.context["renew_form"].errors
    unlock(device)
    renew_url = reverse("portal:two-factor-backup-codes")
    renewed = client.post(renew_url, {"renew-code": code(device, 1)})
    assert renewed.status_code == 200 and len(renewed.context["codes"]) == 10
    off = client.post(off_url, {"off-code": renewed.context["codes"][0]})
    assert off.status_code == 302
    assert not selectors.two_factor_enabled(user=buyer.user)


def test_the_two_factor_page_is_signed_in_only_and_reads_few_queries(person):
    assert Client().get(reverse("portal:two-factor")).status_code == 302
    buyer = person("buyer")
    with_two_factor(buyer)
    client = Client()
    client.force_login(buyer.user)
    with CaptureQueriesContext(connection) as seen:
        page = client.get(reverse("portal:two-factor"))
    assert page.status_code == 200
    assert "<strong>10</strong> unused backup codes" in page.content.decode()
    assert len(seen) <= 8
