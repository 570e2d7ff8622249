"""A buyer adds $50.00 of credit by card and watches the balance rise.

Stripe.js is the fake under tests/portal/fake_stripe/, routed in place of
https://js.stripe.com/v3/ (every other request leaving the machine is aborted); the
PaymentIntent is real, made on localstripe by the same service the API uses; the
credit comes only from the signed ``payment_intent.succeeded`` webhook, delivered to
the live server as Stripe would, while the return page waits for it. A declined card
shows Stripe's message on the page; the whole checkout works from the keyboard."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import requests
from axe_playwright_python.sync_playwright import Axe
from django.conf import settings
from playwright.sync_api import expect

from core.money import Money
from ledger import selectors as books
from payments.models import StripeEvent, TopUp
from payments.webhooks import stripe_event_process
from pricing.welcome import welcome_credit_grant
from tests.payments.conftest import make_event, signed
from tests.portal.conftest import AXE_OPTIONS, sign_in
from tests.portal.test_keyboard_only_sign_in_and_api_key import tab_to

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_STRIPE_JS = Path(__file__).parent / "fake_stripe" / "stripe.js"


@pytest.fixture
def checkout_page(new_context, stripe_on):
    """A page whose Stripe.js is the fake, with localstripe behind the server."""
    context = new_context()
    context.route(
        "https://js.stripe.com/**",
        lambda route: route.fulfill(path=FAKE_STRIPE_JS, content_type="application/javascript"),
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    return page


def available(org) -> int:
    return books.credit_overview(organization=org, currency="USD").available_micros


def stripe_confirms(localstripe_, live_server, top_up: TopUp) -> str:
    """What Stripe does once the buyer confirms: the PaymentIntent succeeds, and the
    signed webhook reaches the server, which stores it; the worker then applies it."""
    localstripe_.post(
        f"/v1/payment_intents/{top_up.payment_intent_id}", payment_method="pm_card_visa"
    )
    intent = localstripe_.post(f"/v1/payment_intents/{top_up.payment_intent_id}/confirm")
    assert intent["status"] == "succeeded"
    event_id = f"evt_portal_{uuid.uuid4().hex[:10]}"
    body, header = signed(make_event(event_id, "payment_intent.succeeded", intent))
    delivered = requests.post(
        f"{live_server.url}/api/v1/stripe/webhook",
        data=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
        timeout=10,
    )
    assert delivered.status_code == 200, delivered.text
    assert StripeEvent.objects.filter(event_id=event_id, processed_at=None).exists()
    stripe_event_process(event_id=event_id)  # the worker's part
    return event_id


def test_a_buyer_tops_up_50_by_card_and_the_page_shows_the_balance_risen(
    live_server,
    checkout_page,
    stripe_on,
    person,
):
    page = checkout_page
    buyer = person("buyer")
    welcome_credit_grant(organization=buyer.organization)
    before = available(buyer.organization)
    sign_in(page, live_server, buyer)

    # the console leads to checkout; $50.00 is a preset
    page.get_by_role("link", name="Add credit").first.click()
    expect(page).to_have_url(re.compile(r"/console/top-up$"))
    page.get_by_label("50.00 USD").check()
    page.get_by_role("button", name="Continue to payment").click()

    # the pay page mounts Stripe's element (the fake) with the PaymentIntent's secret
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    top_up = TopUp.objects.get(organization=buyer.organization)
    assert top_up.amount_micros == 50_000_000
    assert top_up.payment_intent_id.startswith("pi_")
    assert (
        page.locator("#checkout")
        .get_attribute("data-client-secret")
        .startswith(top_up.payment_intent_id)
    )
    results = Axe().run(page, options=AXE_OPTIONS)
    assert results.violations_count == 0, results.generate_report()
    page.get_by_role("button", name="Pay 50.00 USD").click()

    # Stripe sends the buyer back; the page waits: nothing is credited on its word
    expect(page).to_have_url(re.compile(r"redirect_status=succeeded"))
    expect(page.locator('[data-top-up="waiting"]')).to_be_visible()
    assert available(buyer.organization) == before

    # the signed webhook arrives and is applied; the page, polling, shows the rise
    stripe_confirms(stripe_on, live_server, top_up)
    expected = str(Money(before + 50_000_000, "USD"))
    expect(page.locator('[data-figure="available"]')).to_have_text(expected)
    expect(page.get_by_text("50.00 USD was added to your credit.")).to_be_visible()
    assert available(buyer.organization) == before + 50_000_000
    top_up.refresh_from_db()
    assert top_up.status == TopUp.Status.SUCCEEDED
    assert not page.errors, page.errors


def test_a_declined_card_shows_its_message_and_adds_nothing(live_server, checkout_page, person):
    page = checkout_page
    buyer = person("buyer")
    sign_in(page, live_server, buyer)
    page.goto(f"{live_server.url}/console/top-up")
    page.get_by_label("Another amount").check()
    page.get_by_label("Custom amount").fill("75.00")
    page.get_by_role("button", name="Continue to payment").click()

    page.get_by_label("Card number").fill("4000 0000 0000 0002")
    page.get_by_role("button", name="Pay 75.00 USD").click()

    expect(page.get_by_role("alert")).to_have_text("Your card was declined.")
    expect(page).to_have_url(re.compile(r"/console/top-up$"))  # still on the pay page
    expect(page.get_by_role("button", name="Pay 75.00 USD")).to_be_enabled()  # try again
    assert available(buyer.organization) == 0
    assert TopUp.objects.get(organization=buyer.organization).status != TopUp.Status.SUCCEEDED


def test_the_checkout_works_from_the_keyboard(live_server, checkout_page, stripe_on, person):
    page = checkout_page
    buyer = person("buyer")
    sign_in(page, live_server, buyer)
    page.goto(f"{live_server.url}/console/top-up")

    # $50.00 is chosen from the start; Tab to the button and press Enter
    tab_to(page, "Continue to payment", limit=40)
    page.keyboard.press("Enter")
    expect(page.get_by_label("Card number")).to_be_visible()
    tab_to(page, "Card number", limit=40)
    page.keyboard.type("4242424242424242")
    tab_to(page, "Pay 50.00 USD")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"redirect_status=succeeded"))

    stripe_confirms(stripe_on, live_server, TopUp.objects.get(organization=buyer.organization))
    expect(page.locator('[data-figure="available"]')).to_have_text("50.00 USD")
    assert settings.STRIPE_JS_URL == "https://js.stripe.com/v3/"  # the real address, routed
