"""The buyer's money pages through Django's test client: checkout without Stripe,
amounts checked beside their field, who may pay in (admins and finance staff),
auto-recharge and its below-an-hour warning, invoices scoped to the organization,
and query counts that do not grow with the rows behind a page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.models import Organization
from invoicing.models import CreditNote, Invoice
from ledger import services as ledger
from ledger.models import Account
from payments.models import AutoRecharge, StripeCustomer, TopUp

pytestmark = pytest.mark.django_db


def signed_in(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


def money(micros: int) -> dict:
    """An amount as an invoice document holds it."""
    return {"micros": micros, "text": f"{micros // 1_000_000}.{micros % 1_000_000 // 10_000:02d}"}


def make_invoice(org: Organization, n: int, *, total: int = 12_340_000) -> Invoice:
    start = (timezone.now() - timedelta(days=31 * (n + 1))).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    number = f"TDM-{org.pk}-{n:05d}"
    return Invoice.objects.create(
        key=f"monthly:{org.pk}:{n}:USD",
        organization=org,
        kind="monthly",
        currency="USD",
        period_start=start,
        period_end=start + timedelta(days=30),
        status="open",
        issuer="TDM",
        number=number,
        total_micros=total,
        subtotal_micros=total,
        amount_due_micros=total,
        generated_at=start,
        grace_ends_at=start + timedelta(days=33),
        finalized_at=start + timedelta(days=31),
        due_at=start + timedelta(days=45),
        document={
            "schema": "tandem.invoice/1",
            "kind": "monthly",
            "number": number,
            "issuer": "TDM",
            "currency": "USD",
            "status": "final",
            "period": {"start": start.isoformat(), "end": (start + timedelta(days=30)).isoformat()},
            "job": "",
            "buyer": {
                "organization": org.pk,
                "legal_name": f"{org.name} Ltd",
                "address": "1 Main St\nSpringfield",
                "tax_id": "",
                "tax_label": "VAT",
            },
            "finalized_at": (start + timedelta(days=31)).isoformat(),
            "due_at": (start + timedelta(days=45)).isoformat(),
            "lines": [
                {
                    "ordinal": 1,
                    "description": "Inference, llama-8b, prompt tokens",
                    "quantity": "1000000",
                    "unit": "tokens",
                    "unit_price": money(total),
                    "price_unit": 1_000_000,
                    "amount": money(total),
                    "exact": money(total),
                    "entries": [{"position": 1}],
                }
            ],
            "totals": {
                "exact": money(total),
                "subtotal": money(total),
                "rounding": money(0),
                "tax_rate_bps": 0,
                "tax": money(0),
                "total": money(total),
                "prepaid_applied": money(0),
                "amount_due": money(total),
            },
        },
    )


def make_credit_note(invoice: Invoice, n: int) -> CreditNote:
    return CreditNote.objects.create(
        invoice=invoice,
        key=f"cn:{invoice.pk}:{n}",
        issuer="TDM",
        number=f"CN-{invoice.pk}-{n}",
        currency="USD",
        amount_micros=1_000_000,
        tax_micros=0,
        total_micros=1_000_000,
        to_receivable_micros=1_000_000,
        to_credit_micros=0,
        reason=f"goodwill {n}",
        entry_position=1,
        issued_at=timezone.now(),
        issued_by="finance@tandem.example",
    )


# --- checkout -------------------------------------------------------------------


def test_without_stripe_the_checkout_says_payments_are_not_set_up(person, settings):
    settings.STRIPE_SECRET_KEY = ""
    client = signed_in(person("buyer"))

    page = client.get(reverse("portal:top-up"))
    assert page.status_code == 200
    assert "Card payments are not set up" in page.content.decode()

    response = client.post(
        reverse("portal:top-up"), {"preset": "50", "custom_amount": "", "request_key": "k1"}
    )
    assert response.status_code == 503
    assert "not configured on this server" in response.content.decode()
    assert TopUp.objects.count() == 0


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "Enter the amount to add"),
        ("lots", "Enter an amount like 25.00"),
        ("4.99", "must be from 5.00 to 10000.00 USD"),
        ("10000.01", "must be from 5.00 to 10000.00 USD"),
        ("-3", "Enter an amount above zero"),
    ],
)
def test_a_custom_amount_out_of_bounds_is_refused_beside_its_field(person, typed, message):
    client = signed_in(person("buyer"))
    response = client.post(
        reverse("portal:top-up"), {"preset": "custom", "custom_amount": typed, "request_key": "k"}
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == ["custom_amount"], errors
    assert message in errors["custom_amount"][0]
    assert 'aria-invalid="true"' in response.content.decode()
    assert TopUp.objects.count() == 0


@pytest.mark.parametrize("role", ["member"])
def test_members_cannot_pay_in_or_change_auto_recharge(person, role):
    admin = person("buyer")
    member = person(org=admin.organization, role=role)
    client = signed_in(member)

    assert client.get(reverse("portal:top-up")).status_code == 403
    assert client.post(reverse("portal:top-up"), {"preset": "50"}).status_code == 403
    page = client.get(reverse("portal:auto-recharge"))
    assert page.status_code == 200  # members read the setting
    assert "Only admins and finance staff" in page.content.decode()
    change = client.post(
        reverse("portal:auto-recharge-change"),
        {"enabled": "on", "threshold": "10", "amount": "50", "daily_cap": "100"},
    )
    assert change.status_code == 403
    assert not AutoRecharge.objects.exists()


def test_finance_staff_set_auto_recharge_and_bad_values_sit_beside_their_fields(person):
    admin = person("buyer")
    ledger.account_open(organization=admin.organization, kind=Account.Kind.CREDIT, currency="USD")
    finance = signed_in(person(org=admin.organization, role="finance"))

    bad = finance.post(
        reverse("portal:auto-recharge-change"),
        {"enabled": "on", "threshold": "ten", "amount": "1.00", "daily_cap": "100"},
    )
    assert bad.status_code == 400
    assert set(bad.context["form"].errors) == {"threshold"}  # the form's own check first
    below = finance.post(
        reverse("portal:auto-recharge-change"),
        {"enabled": "on", "threshold": "10", "amount": "1.00", "daily_cap": "100"},
    )
    assert below.status_code == 400
    assert "from 5.00 to 10000.00" in below.context["form"].errors["amount"][0]
    cap = finance.post(
        reverse("portal:auto-recharge-change"),
        {"enabled": "on", "threshold": "10", "amount": "50", "daily_cap": "20"},
    )
    assert "at least the recharge amount" in cap.context["form"].errors["daily_cap"][0]

    saved = finance.post(
        reverse("portal:auto-recharge-change"),
        {"enabled": "on", "threshold": "10.00", "amount": "50.00", "daily_cap": "150.00"},
    )
    assert saved.status_code == 302
    row = AutoRecharge.objects.get(organization=admin.organization)
    assert (row.enabled, row.threshold_micros, row.amount_micros, row.daily_cap_micros) == (
        True,
        10_000_000,
        50_000_000,
        150_000_000,
    )
    page = finance.get(reverse("portal:auto-recharge")).content.decode()
    assert "Saved: auto-recharge is on." in page
    assert 'value="50.00"' in page
    assert "No saved payment method yet" in page


def test_the_auto_recharge_page_warns_when_a_recharge_lasts_under_an_hour(person):
    who = person("buyer")
    org = who.organization
    credit = ledger.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
    AutoRecharge.objects.create(
        organization=org,
        enabled=True,
        currency="USD",
        threshold_micros=10_000_000,
        amount_micros=5_000_000,
        daily_cap_micros=50_000_000,
    )
    StripeCustomer.objects.create(
        organization=org, customer_id="cus_test1", default_payment_method="pm_card_visa"
    )
    client = signed_in(who)
    page = client.get(reverse("portal:auto-recharge")).content.decode()
    assert "pm_card_visa" in page
    assert 'data-warning="below-an-hour"' not in page  # no burn yet

    # $240 spent in the last day: $10 an hour, more than one $5 recharge
    _spend(org, credit, 240_000_000)
    page = client.get(reverse("portal:auto-recharge")).content.decode()
    assert 'data-warning="below-an-hour"' in page
    assert "10.00 USD an hour" in page


def _spend(org, credit, micros: int) -> None:
    """Credit granted, then spent within the last day: the burn credit_overview reads."""
    ledger.credits_grant(
        organization=org, amount_micros=micros * 2, currency="USD", reason="test credit"
    )
    revenue = ledger.platform_account(kind=Account.Kind.REVENUE, currency="USD")
    ledger.transfer_create(
        transfer_id=f"spend:{org.pk}",
        debit_account_id=credit.pk,
        credit_account_id=revenue.pk,
        amount_micros=micros,
        currency="USD",
    )


# --- invoices ---------------------------------------------------------------------


def test_invoices_are_listed_and_shown_with_credit_notes_and_a_pdf(person):
    who = person("buyer")
    invoice = make_invoice(who.organization, 1)
    make_credit_note(invoice, 1)
    client = signed_in(who)

    listing = client.get(reverse("portal:invoices")).content.decode()
    assert invoice.number in listing and "12.34 USD" in listing
    page = client.get(reverse("portal:invoice", args=[invoice.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert "Inference, llama-8b, prompt tokens" in body
    assert f"CN-{invoice.pk}-1" in body and "goodwill 1" in body
    assert reverse("portal:invoice-pdf", args=[invoice.pk]) in body
    pdf = client.get(reverse("portal:invoice-pdf", args=[invoice.pk]))
    assert pdf.status_code == 200
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")


def test_another_orgs_invoice_and_top_up_answer_404(person):
    mine = person("buyer")
    theirs = person("buyer")
    invoice = make_invoice(theirs.organization, 1)
    top_up = TopUp.objects.create(
        organization=theirs.organization,
        amount_micros=50_000_000,
        currency="USD",
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key="theirs",
    )
    client = signed_in(mine)
    assert client.get(reverse("portal:invoice", args=[invoice.pk])).status_code == 404
    assert client.get(reverse("portal:invoice-pdf", args=[invoice.pk])).status_code == 404
    assert client.get(reverse("portal:top-up-return", args=[top_up.pk])).status_code == 404
    assert signed_in(theirs).get(reverse("portal:invoice", args=[invoice.pk])).status_code == 200


def test_the_return_page_shows_waiting_failed_and_credited(person):
    who = person("buyer")
    top_up = TopUp.objects.create(
        organization=who.organization,
        amount_micros=50_000_000,
        currency="USD",
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key="r1",
    )
    client = signed_in(who)
    url = reverse("portal:top-up-return", args=[top_up.pk])

    waiting = client.get(url, {"redirect_status": "succeeded"}).content.decode()
    assert 'data-top-up="waiting"' in waiting and 'hx-trigger="every 1s"' in waiting
    partial = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert partial.lstrip().startswith('<div id="top-up-status"')  # the named partial only
    assert "<html" not in partial

    TopUp.objects.filter(pk=top_up.pk).update(status="failed", failure_message="card declined")
    failed = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert 'data-top-up="failed"' in failed and "card declined" in failed
    assert "hx-trigger" not in failed  # polling stops


def test_money_pages_cost_the_same_queries_with_1_and_200_rows(
    person, django_assert_max_num_queries
):
    counts: dict[str, list[int]] = {}
    for rows in (1, 200):
        who = person("buyer")
        first = None
        for n in range(rows):
            invoice = make_invoice(who.organization, n)
            first = first or invoice
        for n in range(rows):
            make_credit_note(first, n)
        client = signed_in(who)
        pages = {
            "invoices": reverse("portal:invoices"),
            "invoice": reverse("portal:invoice", args=[first.pk]),
            "auto-recharge": reverse("portal:auto-recharge"),
            "top-up": reverse("portal:top-up"),
        }
        for name, url in pages.items():
            with django_assert_max_num_queries(14), CaptureQueriesContext(connection) as seen:
                assert client.get(url).status_code == 200
            counts.setdefault(name, []).append(len(seen.captured_queries))
    for name, (few, many) in counts.items():
        assert few == many, f"{name}: {few} queries with 1 row, {many} with 200"
