"""The payouts page's onboarding button, end to end over HTTP: the provider admin's
click opens the organization's Stripe Connect Express account (once) and an account
link back to the payouts page, and sends the browser to Stripe.

localstripe has no Connect (no /v1/accounts, no /v1/account_links), so Stripe here is
the payments tests' own HTTP server answering with Stripe's published example
objects (tests/payments/conftest.py, ``fake_stripe``), reached through the real
Stripe client over a socket."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from payments.models import ConnectedAccount
from tests.payments.conftest import fake_stripe  # noqa: F401

pytestmark = pytest.mark.django_db


def signed_in(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


def test_the_onboarding_button_opens_one_account_and_a_fresh_link_each_time(
    person,
    fake_stripe,  # noqa: F811
):
    admin = person("provider")
    client = signed_in(admin)
    payouts = "http://testserver" + reverse("portal:provider-payouts")

    first = client.post(reverse("portal:provider-connect-onboarding"))
    second = client.post(reverse("portal:provider-connect-onboarding"))

    account = ConnectedAccount.objects.get(organization=admin.organization)
    assert first.status_code == second.status_code == 302
    assert first["Location"].startswith(f"https://connect.stripe.test/setup/{account.account_id}/")
    assert second["Location"] != first["Location"]  # links expire: made on each click
    [opened] = fake_stripe.made("POST", "/v1/accounts")  # the account is made once
    fields = opened.params
    assert fields["type"] == "express" and fields["email"] == admin.email
    assert opened.idempotency_key == f"tandem-connect-{admin.organization.pk}"
    links = [r.params for r in fake_stripe.made("POST", "/v1/account_links")]
    assert len(links) == 2
    assert {(k["account"], k["refresh_url"], k["return_url"]) for k in links} == {
        (account.account_id, payouts, payouts)
    }


def test_only_a_provider_admin_starts_onboarding(person, fake_stripe):  # noqa: F811
    admin = person("provider")
    member = signed_in(person(org=admin.organization, role="member"))
    assert member.post(reverse("portal:provider-connect-onboarding")).status_code == 403
    buyer = signed_in(person("buyer"))
    assert buyer.post(reverse("portal:provider-connect-onboarding")).status_code == 404
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(admin.user)
    assert csrf.post(reverse("portal:provider-connect-onboarding")).status_code == 403
    assert not fake_stripe.made("POST", "/v1/accounts")
    assert not ConnectedAccount.objects.exists()
