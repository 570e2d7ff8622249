"""The buyer's billing details, saved payment methods (against localstripe) and the
place-an-order page, through Django's test client: another organization's ids are
not found, members may not change them, CSRF holds, refusals sit beside their
field, and the query count does not grow with the rows behind a page."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from invoicing import selectors as invoices
from invoicing.documents import invoice_html, invoice_pdf
from invoicing.models import BillingProfile
from marketplace.models import Order
from payments import services as paying
from payments.models import PaymentMethodChange, StripeCustomer
from pricing.welcome import welcome_credit_grant
from tests.marketplace.conftest import fund, healthy_node, offer
from tests.portal.test_buyer_money_pages import make_invoice

pytestmark = pytest.mark.django_db

DETAILS = {
    "legal_name": "Acme Research GmbH",
    "address": "Unter den Linden 1\n10117 Berlin\nGermany",
    "tax_id": "de 123 456 789",
}


def signed_in(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


def queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as seen:
        assert client.get(url).status_code == 200
    return len(seen)


# --- billing details --------------------------------------------------------------


def test_billing_details_are_saved_normalized_and_kept_apart_from_the_tax_rate(person):
    admin = person("buyer")
    BillingProfile.objects.create(
        organization=admin.organization, tax_rate_bps=1_900, tax_label="VAT"
    )
    client = signed_in(admin)

    response = client.post(reverse("portal:billing-details-change"), DETAILS)

    assert response.status_code == 302
    profile = invoices.billing_profile_of(organization=admin.organization)
    assert (profile.legal_name, profile.tax_id) == ("Acme Research GmbH", "DE123456789")
    assert profile.address.splitlines()[-1] == "Germany"
    assert (profile.tax_rate_bps, profile.tax_label) == (1_900, "VAT")  # the operator's
    page = client.get(reverse("portal:billing-details")).content.decode()
    assert "VAT id DE123456789" in page and "VAT rate 19.00%" in page


@pytest.mark.parametrize(
    ("typed", "field", "message"),
    [
        ({"legal_name": ""}, "legal_name", "This field is required"),
        ({"address": "   "}, "address", "This field is required"),
        ({"legal_name": "x" * 201}, "legal_name", "at most 200 characters"),
        ({"tax_id": "DE12345"}, "tax_id", "is not a DE VAT number (e.g. DE123456789)"),
        ({"tax_id": "NL123456789"}, "tax_id", "is not a NL VAT number"),
        ({"tax_id": "#!"}, "tax_id", "4 to 32 letters and digits"),
    ],
)
def test_bad_billing_details_are_refused_beside_their_field(person, typed, field, message):
    client = signed_in(person("buyer"))

    response = client.post(reverse("portal:billing-details-change"), {**DETAILS, **typed})

    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field], errors
    assert message in errors[field][0]
    assert 'aria-invalid="true"' in response.content.decode()
    assert not BillingProfile.objects.exists()


def test_a_us_ein_and_no_tax_id_at_all_are_both_accepted(person):
    client = signed_in(person("buyer"))
    for tax_id, kept in (("12-3456789", "12-3456789"), ("", "")):
        response = client.post(
            reverse("portal:billing-details-change"), {**DETAILS, "tax_id": tax_id}
        )
        assert response.status_code == 302
        assert BillingProfile.objects.get().tax_id == kept


def test_members_read_billing_details_but_only_admins_and_finance_change_them(person):
    admin = person("buyer")
    member = signed_in(person(org=admin.organization, role="member"))
    finance = signed_in(person(org=admin.organization, role="finance"))

    page = member.get(reverse("portal:billing-details"))
    assert page.status_code == 200
    assert "Only admins and finance staff" in page.content.decode()
    assert member.post(reverse("portal:billing-details-change"), DETAILS).status_code == 403
    assert not BillingProfile.objects.exists()
    assert finance.post(reverse("portal:billing-details-change"), DETAILS).status_code == 302


def test_billing_details_need_the_csrf_token_and_are_the_buyers_own(person):
    admin = person("buyer")
    other = person("buyer")
    signed_in(other).post(reverse("portal:billing-details-change"), DETAILS)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin.user)

    assert client.post(reverse("portal:billing-details-change"), DETAILS).status_code == 403
    page = client.get(reverse("portal:billing-details")).content.decode()
    assert "Acme Research" not in page  # the other buyer's details stay theirs
    provider = signed_in(person("provider"))
    assert provider.get(reverse("portal:billing-details")).status_code == 404


def test_the_invoice_prints_the_billing_details_it_was_finalized_with(person):
    admin = person("buyer")
    signed_in(admin).post(reverse("portal:billing-details-change"), DETAILS)
    invoice = make_invoice(admin.organization, 1)
    invoice.document["buyer"] = {
        **invoice.document["buyer"],
        **{k: getattr(BillingProfile.objects.get(), k) for k in ("legal_name", "address")},
        "tax_id": "DE123456789",
        "tax_label": "VAT",
    }
    invoice.save(update_fields=["document"])

    html = invoice_html(invoice).decode()
    assert "Acme Research GmbH" in html and "10117 Berlin" in html and "DE123456789" in html
    pdf = invoice_pdf(invoice)
    assert pdf.startswith(b"%PDF")
    portal = signed_in(admin).get(reverse("portal:invoice", args=[invoice.pk])).content.decode()
    assert "10117 Berlin" in portal and "VAT id DE123456789" in portal


def test_billing_details_page_reads_a_fixed_number_of_queries(person):
    admin = person("buyer")
    client = signed_in(admin)
    before = queries(client, reverse("portal:billing-details"))
    client.post(reverse("portal:billing-details-change"), DETAILS)
    for n in range(25):  # the profile's history grows; the page reads the one row
        client.post(reverse("portal:billing-details-change"), {**DETAILS, "legal_name": f"A{n}"})
    assert queries(client, reverse("portal:billing-details")) <= before


# --- saved payment methods (localstripe) ------------------------------------------


def card(stripe_on, organization, number: str = "4242424242424242") -> str:
    """A card made in localstripe and saved for ``organization`` (made the default)."""
    made = stripe_on.post(
        "/v1/payment_methods",
        type="card",
        **{
            "card[number]": number,
            "card[exp_month]": "12",
            "card[exp_year]": "2031",
            "card[cvc]": "123",
        },
    )
    paying.payment_method_save(organization=organization, payment_method_id=made["id"])
    return made["id"]


def test_saved_cards_are_listed_with_the_default_and_another_made_the_default(person, stripe_on):
    admin = person("buyer")
    first = card(stripe_on, admin.organization)
    second = card(stripe_on, admin.organization, "5555555555554444")
    client = signed_in(admin)

    page = client.get(reverse("portal:payment-methods"))
    assert page.status_code == 200
    saved = page.context["saved"]
    assert [c.payment_method_id for c in saved.cards] == [second, first]  # default first
    assert saved.cards[0].is_default and saved.cards[0].last4 == "4444"

    response = client.post(reverse("portal:payment-method-default", args=[first]))

    assert response.status_code == 302
    assert StripeCustomer.objects.get().default_payment_method == first
    customer = stripe_on.get(f"/v1/customers/{StripeCustomer.objects.get().customer_id}")
    assert customer["invoice_settings"]["default_payment_method"] == first
    change = PaymentMethodChange.objects.get()
    assert (change.action, change.status, change.requested_by) == (
        "make_default",
        "succeeded",
        admin.email,
    )


def test_removing_the_default_card_leaves_auto_recharge_nothing_to_charge(person, stripe_on):
    admin = person("buyer")
    only = card(stripe_on, admin.organization)
    client = signed_in(admin)

    assert client.post(reverse("portal:payment-method-remove", args=[only])).status_code == 302

    assert StripeCustomer.objects.get().default_payment_method == ""
    assert stripe_on.get(f"/v1/payment_methods/{only}")["customer"] is None
    page = client.get(reverse("portal:payment-methods")).content.decode()
    assert "No saved cards yet" in page


def test_another_organizations_card_is_not_found_and_members_may_not_change_cards(
    person, stripe_on
):
    admin = person("buyer")
    mine = card(stripe_on, admin.organization)
    other = person("buyer")
    theirs = card(stripe_on, other.organization)
    client = signed_in(admin)

    assert client.post(reverse("portal:payment-method-default", args=[theirs])).status_code == 404
    assert client.post(reverse("portal:payment-method-remove", args=[theirs])).status_code == 404
    assert stripe_on.get(f"/v1/payment_methods/{theirs}")["customer"] is not None
    member = signed_in(person(org=admin.organization, role="member"))
    assert member.get(reverse("portal:payment-methods")).status_code == 200
    assert member.post(reverse("portal:payment-method-remove", args=[mine])).status_code == 403
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(admin.user)
    assert csrf.post(reverse("portal:payment-method-remove", args=[mine])).status_code == 403
    assert not PaymentMethodChange.objects.exists()
    assert StripeCustomer.objects.get(organization=admin.organization).default_payment_method


def test_without_stripe_the_cards_page_says_payments_are_not_set_up(person, settings):
    settings.STRIPE_SECRET_KEY = ""
    page = signed_in(person("buyer")).get(reverse("portal:payment-methods"))
    assert page.status_code == 200
    assert "Card payments are not set up" in page.content.decode()


def test_the_cards_page_reads_a_fixed_number_of_queries(person, stripe_on):
    admin = person("buyer")
    card(stripe_on, admin.organization)
    client = signed_in(admin)
    one = queries(client, reverse("portal:payment-methods"))
    for _ in range(25):
        card(stripe_on, admin.organization)
    page = client.get(reverse("portal:payment-methods"))
    assert len(page.context["saved"].cards) == 26
    assert queries(client, reverse("portal:payment-methods")) == one


# --- placing an order ---------------------------------------------------------------


def market(provider, n: int = 1) -> None:
    for i in range(n):
        offer(healthy_node(provider.organization, f"n{i}", count=2), count=2, price=2_000_000 + i)


def test_the_order_page_shows_the_market_and_places_an_order(person):
    buyer = person("buyer")
    fund(buyer.organization, 100_000_000)
    market(person("provider"), 3)
    client = signed_in(buyer)

    page = client.get(reverse("portal:console-order-create"))
    assert page.status_code == 200
    [line] = page.context["lines"]
    assert (line.gpu_model, line.offers, line.price_min_micros) == ("h100-sxm-80gb", 3, 2_000_000)
    assert "H100 SXM 80GB: from 2.00 USD an hour" in page.content.decode()

    response = client.post(
        reverse("portal:console-order-create"),
        {
            "gpu_model": "h100-sxm-80gb",
            "gpu_count": "2",
            "length": "fixed",
            "duration_hours": "3",
            "interruptible": "on",
            "max_price": "2.50",
            "request_key": page.context["form"]["request_key"].value(),
        },
    )

    order = Order.objects.get(organization=buyer.organization)
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:console-order", args=[order.pk])
    assert (order.gpus_per_node, order.duration_seconds, order.kind) == (2, 10_800, "interruptible")
    assert order.limit_price_per_gpu_hour_micros == 2_500_000
    assert order.reserved_micros > 0


def test_a_form_sent_twice_places_one_order_and_a_changed_form_gets_a_new_key(person):
    # given: the page, and its form filled in
    buyer = person("buyer")
    fund(buyer.organization, 100_000_000)
    market(person("provider"))
    client = signed_in(buyer)
    key = client.get(reverse("portal:console-order-create")).context["form"]["request_key"]
    form = {
        "gpu_model": "h100-sxm-80gb",
        "gpu_count": "1",
        "length": "fixed",
        "duration_hours": "2",
        "max_price": "2.50",
        "request_key": key.value(),
    }

    # when: sent twice (a double click, a reload)
    first = client.post(reverse("portal:console-order-create"), form)
    second = client.post(reverse("portal:console-order-create"), form)

    # then: one order, and both land on it
    order = Order.objects.get(organization=buyer.organization)
    placed = reverse("portal:console-order", args=[order.pk])
    assert first["Location"] == second["Location"] == placed

    # when: the back button, a choice changed, the same form sent again
    changed = client.post(reverse("portal:console-order-create"), {**form, "duration_hours": "3"})

    # then: refused with a reason and a new key for the new choices; sent again, placed
    assert changed.status_code == 400
    assert "already placed an order" in str(changed.context["form"].non_field_errors())
    fresh = changed.context["form"]["request_key"].value()
    assert fresh != form["request_key"]
    changed_form = {**form, "duration_hours": "3", "request_key": fresh}
    again = client.post(reverse("portal:console-order-create"), changed_form)
    assert again.status_code == 302
    assert Order.objects.filter(organization=buyer.organization).count() == 2


def test_a_refused_form_is_sent_again_under_its_key_once_corrected(person):
    buyer = person("buyer")
    fund(buyer.organization, 10_000_000)
    form = {
        "gpu_model": "h100-sxm-80gb",
        "gpu_count": "1",
        "length": "fixed",
        "duration_hours": "1",
        "max_price": "900",
        "request_key": "k1",
    }
    client = signed_in(buyer)

    refused = client.post(reverse("portal:console-order-create"), form)
    placed = client.post(reverse("portal:console-order-create"), {**form, "max_price": "2.00"})

    assert refused.status_code == 400 and "Not enough credit" in str(refused.context["form"].errors)
    assert placed.status_code == 302
    assert Order.objects.filter(organization=buyer.organization).count() == 1


def test_an_open_ended_order_needs_no_hours(person):
    buyer = person("buyer")
    welcome_credit_grant(organization=buyer.organization)
    response = signed_in(buyer).post(
        reverse("portal:console-order-create"),
        {
            "gpu_model": "l4-24gb",
            "gpu_count": "1",
            "length": "open",
            "max_price": "0.50",
            "request_key": "open-ended",
        },
    )
    assert response.status_code == 302
    order = Order.objects.get()
    assert (order.duration_seconds, order.kind) == (None, "on_demand")


@pytest.mark.parametrize(
    ("typed", "field", "message"),
    [
        ({"max_price": "cheap"}, "max_price", "Enter a price like 2.50"),
        ({"max_price": "0"}, "max_price", "above zero"),
        ({"gpu_count": "0"}, "gpu_count", "greater than or equal to 1"),
        ({"gpu_count": "65"}, "gpu_count", "must be <= 64"),
        ({"duration_hours": ""}, "duration_hours", "Enter the number of hours"),
        ({"duration_hours": "9000"}, "duration_hours", "must be <= 31622400"),
        ({"gpu_model": "k80"}, "gpu_model", "Select a valid choice"),
        ({"max_price": "900"}, "max_price", "Not enough credit"),
    ],
)
def test_refusals_of_an_order_sit_beside_their_field(person, typed, field, message):
    buyer = person("buyer")
    fund(buyer.organization, 10_000_000)
    form = {
        "gpu_model": "h100-sxm-80gb",
        "gpu_count": "1",
        "length": "fixed",
        "duration_hours": "1",
        "max_price": "2.00",
        "request_key": "refused",
    }

    response = signed_in(buyer).post(reverse("portal:console-order-create"), {**form, **typed})

    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field], errors
    assert message in errors[field][0]
    assert not Order.objects.exists()


def test_only_operators_place_orders_and_the_csrf_token_is_checked(person):
    admin = person("buyer")
    welcome_credit_grant(organization=admin.organization)
    finance = signed_in(person(org=admin.organization, role="finance"))
    form = {"gpu_model": "l4-24gb", "gpu_count": "1", "length": "open", "max_price": "0.50"}

    assert finance.get(reverse("portal:console-order-create")).status_code == 403
    assert finance.post(reverse("portal:console-order-create"), form).status_code == 403
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(admin.user)
    assert csrf.post(reverse("portal:console-order-create"), form).status_code == 403
    provider = signed_in(person("provider"))
    assert provider.get(reverse("portal:console-order-create")).status_code == 404
    assert not Order.objects.exists()


def test_the_order_page_reads_a_fixed_number_of_queries(person):
    buyer = person("buyer")
    provider = person("provider")
    market(provider, 1)
    client = signed_in(buyer)
    one = queries(client, reverse("portal:console-order-create"))
    market(person("provider"), 25)
    assert queries(client, reverse("portal:console-order-create")) <= one + 2
