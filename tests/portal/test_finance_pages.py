"""The operator's finance pages and the provider's earnings pages through Django's test
client: who may open them (buyers and providers find no /finance/, the operator's
plain members are refused, finance staff read every buyer's invoices and every
provider's statements as the API lets them), another organization's ids answer 404,
forms say what is wrong beside the field, and list pages cost the same queries with 1
row and with many behind them."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core import services as tenancy
from core.models import Organization
from exports.models import FinanceExport
from invoicing.models import Invoice, ProviderStatement
from ledger import services as ledger
from payments.models import ConnectedAccount, Payout
from tests.portal.test_buyer_money_pages import make_invoice

pytestmark = pytest.mark.django_db

FINANCE_PAGES = [
    "portal:finance",
    "portal:finance-trial-balance",
    "portal:finance-journal",
    "portal:finance-accounts",
    "portal:finance-invoices",
    "portal:finance-close",
    "portal:finance-exports",
    "portal:finance-statements",
]
PROVIDER_PAGES = ["portal:provider-earnings", "portal:provider-payouts"]
LAST_MONTH = (timezone.now().date().replace(day=1) - timedelta(days=1)).replace(day=1)


def signed_in(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


@pytest.fixture
def operator(db) -> Organization:
    return tenancy.org_create(name="Operator", kind="both", is_operator=True)


@pytest.fixture
def finance(person, operator):
    return person(org=operator, role="finance")


def _statement(provider: Organization, period: date, net: int) -> ProviderStatement:
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    line = {
        "node": "gpu-01",
        "gpu_model": "h100-sxm-80gb",
        "gpu_seconds": 7200,
        "gpu_hours": "2.0000",
        "gross": {"micros": net, "text": f"{net / 1_000_000:.2f}"},
        "platform_fee": {"micros": net // 10, "text": f"{net / 10_000_000:.2f}"},
        "net_payable": {"micros": net, "text": f"{net / 1_000_000:.2f}"},
        "entries": [],
    }
    money = {"micros": net, "text": f"{net / 1_000_000:.2f}"}
    zero = {"micros": 0, "text": "0.00"}
    return ProviderStatement.objects.create(
        key=f"statement:{provider.pk}:{period:%Y-%m}:USD",
        organization=provider,
        currency="USD",
        period_start=start,
        period_end=start + timedelta(days=28),
        gpu_seconds=7200,
        gross_micros=net,
        fee_micros=net // 10,
        net_payable_micros=net,
        closing_balance_micros=net,
        generated_at=start + timedelta(days=35),
        document={
            "schema": "tandem.provider_statement/1",
            "provider": {"organization": provider.pk, "name": provider.name},
            "currency": "USD",
            "period": {"start": start.isoformat(), "end": start.isoformat()},
            "lines": [line],
            "payouts": [],
            "totals": {
                "gpu_seconds": 7200,
                "gross": money,
                "platform_fee": {"micros": net // 10, "text": "x"},
                "net_payable": money,
                "payouts": zero,
                "closing_balance": money,
            },
        },
    )


# --- who may open what --------------------------------------------------------


@pytest.mark.parametrize("name", FINANCE_PAGES)
def test_finance_staff_open_every_finance_page(finance, name):
    response = signed_in(finance).get(reverse(name))
    assert response.status_code == 200, response.content[:500]
    assert b'aria-label="Finance"' in response.content  # the section's navigation


@pytest.mark.parametrize("name", FINANCE_PAGES)
def test_buyers_and_providers_find_no_finance_pages_and_plain_members_are_refused(
    person, operator, name
):
    for kind in ("buyer", "provider", "both"):
        assert signed_in(person(kind)).get(reverse(name)).status_code == 404, kind
    # a finance member of a buyer organization is not the operator's finance staff
    assert signed_in(person("buyer", role="finance")).get(reverse(name)).status_code == 404
    member = person(org=operator, role="member")
    assert signed_in(member).get(reverse(name)).status_code == 403
    response = Client().get(reverse(name))
    assert response.status_code == 302 and "/sign-in/" in response["Location"]


def test_the_finance_home_is_the_finance_overview(finance, person, operator):
    response = signed_in(finance).get("/")
    assert response.status_code == 302 and response["Location"] == reverse("portal:finance")
    page = signed_in(finance).get(reverse("portal:finance")).content.decode()
    assert 'href="/finance/"' in page  # the main navigation links it
    # a member of a buyer sees no finance link
    assert 'href="/finance/"' not in signed_in(person("buyer")).get("/console/").content.decode()


def test_finance_reads_any_buyers_invoice_and_an_unknown_id_is_404(finance, person):
    buyer = person("buyer")
    invoice = make_invoice(buyer.organization, 1)
    client = signed_in(finance)
    page = client.get(reverse("portal:finance-invoice", args=[invoice.pk]))
    assert page.status_code == 200
    assert invoice.number.encode() in page.content and b"12.34 USD" in page.content
    pdf = client.get(reverse("portal:finance-invoice-pdf", args=[invoice.pk]))
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    missing = invoice.pk + 1000
    assert client.get(reverse("portal:finance-invoice", args=[missing])).status_code == 404
    assert client.get(reverse("portal:finance-invoice-pdf", args=[missing])).status_code == 404
    # the buyer itself reads it in its console, not on the finance pages
    own = signed_in(buyer)
    assert own.get(reverse("portal:finance-invoice", args=[invoice.pk])).status_code == 404
    # another buyer finds neither
    other = signed_in(person("buyer"))
    assert other.get(reverse("portal:invoice", args=[invoice.pk])).status_code == 404
    assert other.get(reverse("portal:finance-invoice-pdf", args=[invoice.pk])).status_code == 404


def test_finance_reads_a_providers_statement_but_not_a_buyers_nor_a_month_to_come(finance, person):
    provider, buyer = person("provider"), person("buyer")
    _statement(provider.organization, LAST_MONTH, 25_000_000)
    client = signed_in(finance)
    url = reverse(
        "portal:finance-statement", args=[provider.organization.pk, f"{LAST_MONTH:%Y-%m}"]
    )
    page = client.get(url)
    assert page.status_code == 200 and b"25.00 USD" in page.content
    listed = client.get(reverse("portal:finance-statements")).content.decode()
    assert provider.organization.name in listed and "25.00 USD" in listed
    for org_id, month in [
        (buyer.organization.pk, f"{LAST_MONTH:%Y-%m}"),  # not a provider
        (provider.organization.pk + 1000, f"{LAST_MONTH:%Y-%m}"),  # no such org
        (provider.organization.pk, "2999-01"),  # not begun
        (provider.organization.pk, "soon"),  # not a month
    ]:
        response = client.get(reverse("portal:finance-statement", args=[org_id, month]))
        assert response.status_code == 404, (org_id, month)


def test_a_provider_sees_its_own_statements_only(person):
    mine, theirs = person("provider"), person("provider")
    _statement(mine.organization, LAST_MONTH, 30_000_000)
    _statement(theirs.organization, LAST_MONTH, 70_000_000)
    client = signed_in(mine)
    earnings = client.get(reverse("portal:provider-earnings")).content.decode()
    assert "30.00 USD" in earnings and "70.00 USD" not in earnings
    month = f"{LAST_MONTH:%Y-%m}"
    page = client.get(reverse("portal:provider-statement", args=[month])).content.decode()
    assert "30.00 USD" in page and "70.00 USD" not in page
    rows = list(
        csv.reader(
            io.StringIO(
                client.get(reverse("portal:provider-statement-csv", args=[month])).content.decode()
            )
        )
    )
    assert rows == [
        [
            "node",
            "gpu_model",
            "gpu_seconds",
            "gpu_hours",
            "gross",
            "platform_fee",
            "net_payable",
            "currency",
        ],
        ["gpu-01", "h100-sxm-80gb", "7200", "2.0000", "30.00", "3.00", "30.00", "USD"],
    ]
    assert client.get(reverse("portal:provider-statement", args=["2999-01"])).status_code == 404
    assert client.get(reverse("portal:provider-statement", args=["nope"])).status_code == 404
    # the finance pages are not theirs, and buyers find no earnings pages
    assert client.get(reverse("portal:finance-statements")).status_code == 404
    buyer = signed_in(person("buyer"))
    for name in PROVIDER_PAGES:
        assert buyer.get(reverse(name)).status_code == 404
    assert buyer.get(reverse("portal:provider-statement", args=[month])).status_code == 404


def test_payouts_show_the_connect_state_and_only_the_organizations_payouts(person):
    mine, theirs = person("provider"), person("provider")
    for who, amount in ((mine, 11_000_000), (theirs, 99_000_000)):
        account = ConnectedAccount.objects.create(
            organization=who.organization,
            account_id=f"acct_{who.organization.pk}",
            country="US",
            details_submitted=True,
        )
        Payout.objects.create(
            organization=who.organization,
            connected_account=account,
            amount_micros=amount,
            currency="USD",
            status="paid",
            transfer_id=f"tr_{who.organization.pk}",
        )
    page = signed_in(mine).get(reverse("portal:provider-payouts")).content.decode()
    assert "11.00 USD" in page and "99.00 USD" not in page
    assert 'data-connect-state="pending_verification"' in page
    assert "Continue onboarding at Stripe" in page
    # a plain member sees the state, not the button; onboarding is the admin's
    member = person(org=mine.organization, role="member")
    page = signed_in(member).get(reverse("portal:provider-payouts")).content.decode()
    assert "Continue onboarding" not in page
    refused = signed_in(member).post(reverse("portal:provider-connect-onboarding"))
    assert refused.status_code == 403


# --- forms --------------------------------------------------------------------


def _field_error(html: str, field: str) -> str:
    marker = f'id="id_{field}_error"'
    assert marker in html, f"no error beside {field}"
    return html.split(marker, 1)[1].split("</ul>", 1)[0]


def test_closing_a_month_needs_a_past_month_and_a_confirmation(finance):
    client = signed_in(finance)
    this_month = f"{timezone.now():%Y-%m}"
    response = client.post(reverse("portal:finance-close"), {"period": this_month})
    assert response.status_code == 400
    html = response.content.decode()
    assert "has not ended yet" in _field_error(html, "period")
    assert "Tick this to confirm" in _field_error(html, "confirm")
    response = client.post(reverse("portal:finance-close"), {"period": "October", "confirm": "on"})
    assert "YYYY-MM" in _field_error(response.content.decode(), "period")


def test_closing_a_past_month_finalizes_its_drafts(finance, person):
    buyer = person("buyer")
    ledger.credits_grant(
        organization=buyer.organization,
        amount_micros=5_000_000,
        currency="USD",
        reason="top-up",
        transfer_id="close-test",
    )
    response = signed_in(finance).post(
        reverse("portal:finance-close"),
        {"period": f"{LAST_MONTH:%Y-%m}", "finalize": "on", "confirm": "on"},
        follow=True,
    )
    assert response.status_code == 200
    assert f"{LAST_MONTH:%Y-%m} closed:" in response.content.decode()
    assert not Invoice.objects.filter(status="draft", period_start__date=LAST_MONTH).exists()


def test_an_export_request_is_checked_beside_its_fields_and_recorded(finance, settings, tmp_path):
    settings.EXPORT_DIR = tmp_path / "exports"
    client = signed_in(finance)
    # usage detail needs an organization: the service's refusal sits beside it
    response = client.post(
        reverse("portal:finance-export-create"),
        {"kind": "usage_detail", "format": "csv", "period": "2026-10"},
    )
    assert response.status_code == 400
    assert "usage_detail needs organization" in _field_error(
        response.content.decode(), "organization"
    )
    response = client.post(
        reverse("portal:finance-export-create"), {"kind": "ar_aging", "format": "xml"}
    )
    assert response.status_code == 400 and _field_error(response.content.decode(), "format")
    assert not FinanceExport.objects.exists()
    response = client.post(
        reverse("portal:finance-export-create"),
        {"kind": "invoice_register", "format": "csv", "period": "2026-10"},
        follow=True,
    )
    export = FinanceExport.objects.get()
    assert export.params == {"period": "2026-10-01"} and export.status == "queued"
    assert f"Export {export.pk} (invoice_register, csv) is queued" in response.content.decode()
    # not done: no file to download yet, and the list says so
    download = client.get(reverse("portal:finance-export-download", args=[export.pk]), follow=True)
    assert download.redirect_chain == [(reverse("portal:finance-exports"), 302)]
    assert f"export {export.pk} is queued; download it once it has succeeded" in (
        download.content.decode()
    )
    assert (
        client.get(reverse("portal:finance-export-download", args=[export.pk + 1])).status_code
        == 404
    )


def test_a_bad_filter_says_so_beside_it(finance):
    client = signed_in(finance)
    response = client.get(
        reverse("portal:finance-journal"), {"since": "2026-10-05", "until": "2026-10-01"}
    )
    assert response.status_code == 400
    assert "on or after" in _field_error(response.content.decode(), "until")
    response = client.get(reverse("portal:finance-invoices"), {"period": "last year"})
    assert response.status_code == 400
    assert "YYYY-MM" in _field_error(response.content.decode(), "period")


# --- query counts: the same with 1 row and with many --------------------------


def _fill(
    finance_org: Organization, buyers: list[Organization], provider: Organization, rows: int
) -> None:
    for buyer in buyers:  # an invoice, an account and a journal entry each
        make_invoice(buyer, 1)
        ledger.credits_grant(
            organization=buyer,
            amount_micros=1_000_000,
            currency="USD",
            reason="top-up",
            transfer_id=f"fill-{buyer.pk}",
        )
    for i in range(rows):
        month = date(2020 + i // 12, i % 12 + 1, 1)
        _statement(provider, month, 1_000_000 + i)
    FinanceExport.objects.bulk_create(
        FinanceExport(
            kind="ar_aging",
            format="csv",
            params={},
            requested_by="f@example.com",
            created_at=timezone.now(),
        )
        for _ in range(rows)
    )
    account = ConnectedAccount.objects.create(
        organization=provider, account_id=f"acct_{provider.pk}", country="US"
    )
    Payout.objects.bulk_create(
        Payout(
            organization=provider,
            connected_account=account,
            amount_micros=1_000_000,
            currency="USD",
            status="paid",
            transfer_id=f"tr_{provider.pk}_{i}",
        )
        for i in range(rows)
    )


def test_every_new_list_page_costs_the_same_queries_with_1_and_many_rows(
    person, django_assert_max_num_queries
):
    counts: dict[str, list[int]] = {}
    for rows in (1, 40):
        operator = Organization.objects.filter(is_operator=True).first() or tenancy.org_create(
            name="Operator", kind="both", is_operator=True
        )
        finance = person(org=operator, role="finance")
        provider = person("provider")
        buyers = [person("buyer").organization for _ in range(rows)]
        _fill(operator, buyers, provider.organization, rows)
        pages = [(finance, reverse(name)) for name in FINANCE_PAGES]
        pages += [(provider, reverse(name)) for name in PROVIDER_PAGES]
        for who, url in pages:
            client = signed_in(who)
            cache.clear()  # cold: the overview's revenue is cached under the books' version
            with django_assert_max_num_queries(14), CaptureQueriesContext(connection) as seen:
                response = client.get(url)
            assert response.status_code == 200, url
            counts.setdefault(url, []).append(len(seen.captured_queries))
        # each run adds to the same tables: the pages read the newest, whatever is there
        ProviderStatement.objects.all().delete()
    for url, (few, many) in counts.items():
        assert few == many, f"{url}: {few} queries with 1 row, {many} with 40"
