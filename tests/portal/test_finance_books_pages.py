"""The finance pages of what the platform owes and is owed (prepaid-credit liability,
receivables aging, reconciliation, payouts due), an invoice's actions (issue, void,
mark paid) and the exports list's progress, through Django's test client: who may
open or post them, another organization's ids, CSRF, errors beside their fields,
the figures against the ledger, and query counts the same with 1 row and with many."""

from __future__ import annotations

import re
from datetime import UTC, date, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.models import Organization
from core.money import Money
from core.services import org_create
from exports.models import FinanceExport
from invoicing.aging import aging_bucket_of
from invoicing.models import Invoice
from invoicing.month_close import period_close
from ledger import services as ledger
from payments.models import (
    ConnectedAccount,
    Payout,
    ReconciliationDifference,
    ReconciliationRun,
)
from tests.invoicing.world import CLOSE_AT, PERIOD, balance, taxed_month
from tests.portal.test_buyer_money_pages import make_invoice

pytestmark = pytest.mark.django_db

NEW_PAGES = [
    "portal:finance-liability",
    "portal:finance-aging",
    "portal:finance-reconciliation",
    "portal:finance-payouts",
    "portal:finance-export-rows",
]


def signed_in(who, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(who.user)
    return client


@pytest.fixture
def finance(person, cast):
    """Finance staff of the cast's operator."""
    return person(org=cast.operator, role="finance")


def _field_error(html: str, field: str) -> str:
    marker = f'id="id_{field}_error"'
    assert marker in html, f"no error beside {field}"
    return html.split(marker, 1)[1].split("</ul>", 1)[0]


def _grant(org: Organization, amount: int, ref: str) -> None:
    ledger.credits_grant(
        organization=org, amount_micros=amount, currency="USD", reason="top-up", transfer_id=ref
    )


# --- who may open what --------------------------------------------------------


@pytest.mark.parametrize("name", NEW_PAGES)
def test_finance_opens_each_new_page_and_nobody_else_does(finance, person, name):
    response = signed_in(finance).get(reverse(name))
    assert response.status_code == 200, response.content[:500]
    for kind in ("buyer", "provider", "both"):
        assert signed_in(person(kind)).get(reverse(name)).status_code == 404, kind
    assert signed_in(person("buyer", role="finance")).get(reverse(name)).status_code == 404
    member = person(org=finance.organization, role="member")
    assert signed_in(member).get(reverse(name)).status_code == 403
    anonymous = Client().get(reverse(name))
    assert anonymous.status_code == 302 and "/sign-in/" in anonymous["Location"]


# --- prepaid credit -------------------------------------------------------------


def test_the_liability_is_every_buyers_unused_credit_with_the_largest_holders(finance, person):
    small, large = person("buyer").organization, person("buyer").organization
    _grant(small, 3_000_000, "liab-small")
    _grant(large, 70_500_000, "liab-large")
    page = signed_in(finance).get(reverse("portal:finance-liability")).content.decode()
    figure = re.search(r'data-figure="liability-USD">([^<]+)<', page)
    assert figure is not None
    # the welcome credits of sign-up count too: the total is what the credit accounts hold
    expected = balance(small, "credit") + balance(large, "credit")
    assert figure.group(1) == str(Money(expected, "USD"))
    rows = page.split('data-liability-rows="USD"', 1)[1]
    assert rows.index(large.name) < rows.index(small.name)  # the largest first
    assert str(Money(balance(large, "credit"), "USD")) in rows


# --- receivables aging ------------------------------------------------------------


def test_aging_buckets_what_each_buyer_owes_by_days_past_due(finance, person):
    buyer = person("buyer").organization
    invoices = [make_invoice(buyer, n, total=(n + 1) * 1_000_000) for n in (0, 1, 3)]
    paid = make_invoice(person("buyer").organization, 2, total=99_000_000)
    Invoice.objects.filter(pk=paid.pk).update(status="paid", amount_paid_micros=99_000_000)
    page = signed_in(finance).get(reverse("portal:finance-aging")).content.decode()
    today = timezone.now().date()
    expected: dict[str, int] = {}
    for invoice in invoices:
        bucket = aging_bucket_of((today - invoice.due_at.astimezone(UTC).date()).days)
        expected[bucket] = expected.get(bucket, 0) + invoice.amount_due_micros
    assert len(expected) >= 2  # the invoices fall in different buckets
    row = page.split('data-aging-rows="USD"', 1)[1].split("</tr>", 2)[1]
    cells = re.findall(r'<td class="num">([^<]+)</td>', row)
    buckets = ["current", "1-30", "31-60", "61-90", "90+"]
    assert cells == ["3"] + [str(Money(expected.get(b, 0), "USD")) for b in buckets] + ["7.00 USD"]
    assert 'data-figure="aging-USD">7.00 USD<' in page  # the paid invoice owes nothing
    # a day before any invoice was finalized: nothing owed
    early = (invoices[-1].finalized_at - timedelta(days=1)).date().isoformat()
    before = signed_in(finance).get(reverse("portal:finance-aging"), {"as_of": early})
    assert "Nothing is owed" in before.content.decode()
    bad = signed_in(finance).get(reverse("portal:finance-aging"), {"as_of": "yesterday"})
    assert bad.status_code == 400 and "valid date" in _field_error(bad.content.decode(), "as_of")


def test_aging_pages_its_buyers_and_totals_them_all(finance, cast):
    # given: 30 buyers, each owing on one invoice
    buyers = [org_create(name=f"Owing {n:02d}", kind="buyer") for n in range(30)]
    for n, buyer in enumerate(buyers):
        make_invoice(buyer, 0, total=(n + 1) * 1_000_000)
    client = signed_in(finance)

    # when: the first page, then the second
    first = client.get(reverse("portal:finance-aging")).content.decode()
    second = client.get(reverse("portal:finance-aging"), {"page": 2}).content.decode()

    # then: 25 buyers, then 5, the largest first; the total is of all 30
    def names(page: str) -> list[str]:
        return re.findall(r"(Owing \d\d)", page.split('data-aging-rows="USD"', 1)[1])

    assert names(first) == [f"Owing {n:02d}" for n in range(29, 4, -1)]
    assert names(second) == [f"Owing {n:02d}" for n in range(4, -1, -1)]
    total = str(Money(sum(range(1, 31)) * 1_000_000, "USD"))
    assert f'data-figure="aging-USD">{total}<' in first
    assert f'data-figure="aging-USD">{total}<' in second
    assert "Page 1 of 2 (30 in all)" in first


# --- reconciliation --------------------------------------------------------------


def test_the_reconciliation_of_a_closed_month_has_nothing_unexplained(finance, cast):
    taxed_month(cast, events_per_buyer=15)
    period_close(period=PERIOD, now=CLOSE_AT)
    client = signed_in(finance)
    page = client.get(reverse("portal:finance-reconciliation")).content.decode()
    assert 'data-figure="unexplained">0.00 USD<' in page
    assert "Receivables against invoices still owed" in page
    assert "Stripe has not been reconciled for USD yet" in page
    assert '<option value="USD" selected>USD</option>' in page  # the currency reconciled
    bad = client.get(reverse("portal:finance-reconciliation"), {"currency": "XYZ"})
    assert bad.status_code == 400
    assert "not one of the available choices" in _field_error(bad.content.decode(), "currency")


def test_an_unexplained_difference_is_listed_with_its_cause(finance, person):
    buyer = person("buyer").organization
    make_invoice(buyer, 0)  # an invoice whose amounts the ledger never posted
    page = signed_in(finance).get(reverse("portal:finance-reconciliation")).content.decode()
    assert 'data-figure="unexplained">12.34 USD<' in page
    differences = page.split("data-reconciliation-differences", 1)[1]
    assert f"TDM-{buyer.pk}-00000" in differences
    assert "the invoice and the ledger disagree" in differences


def test_the_newest_stripe_check_is_shown_with_each_difference_and_its_cause(finance):
    older = ReconciliationRun.objects.create(
        day=date(2026, 11, 1), currency="USD", ran_at=timezone.now(), matched=9
    )
    ReconciliationDifference.objects.create(run=older, kind="amount_mismatch", source_id="ch_old")
    run = ReconciliationRun.objects.create(
        day=date(2026, 11, 2),
        currency="USD",
        ledger_micros=50_000_000,
        stripe_micros=20_000_000,
        matched=3,
        ran_at=timezone.now(),
    )
    ReconciliationDifference.objects.create(
        run=run,
        kind="missing_in_stripe",
        source_id="ch_demo_7",
        ledger_micros=30_000_000,
        transfer_ids=["topup:7"],
    )
    page = signed_in(finance).get(reverse("portal:finance-reconciliation")).content.decode()
    assert "2026-11-02" in page and "3 matched" in page and "ch_old" not in page
    row = page.split("data-stripe-differences", 1)[1].split("</tr>", 2)[1]
    assert "ch_demo_7" in row and "in the ledger, not at Stripe" in row
    assert "30.00 USD" in row and "topup:7" in row


# --- payouts due -----------------------------------------------------------------


def test_payouts_due_list_each_providers_payable_and_what_the_next_run_pays(finance, cast):
    taxed_month(cast, events_per_buyer=15)
    ConnectedAccount.objects.create(
        organization=cast.provider_a, account_id="acct_a", country="US", payouts_enabled=True
    )
    owed_a, owed_b = balance(cast.provider_a, "payable"), balance(cast.provider_b, "payable")
    assert owed_a > 0 and owed_b > 0
    page = signed_in(finance).get(reverse("portal:finance-payouts")).content.decode()
    assert f'data-figure="payables">{Money(owed_a + owed_b, "USD")}<' in page
    rows = page.split("data-payouts-due", 1)[1].split("</table>", 1)[0]
    for org, owed, state in (
        (cast.provider_a, owed_a, "paid next run" if owed_a >= 20_000_000 else "below the minimum"),
        (cast.provider_b, owed_b, "no Stripe account"),
    ):
        row = rows.split(org.name, 1)[1].split("</tr>", 1)[0]
        assert str(Money(owed, "USD")) in row and state in row
    assert "No payout has been made yet" in page


# --- an invoice's actions ----------------------------------------------------------


@pytest.fixture
def drafted(cast):
    taxed_month(cast, events_per_buyer=15)
    period_close(period=PERIOD, finalize=False, now=CLOSE_AT)
    return cast


def _invoice_of(org) -> Invoice:
    return Invoice.objects.get(organization=org, kind="monthly")


def test_finance_issues_a_draft_then_marks_it_paid(finance, drafted):
    draft = _invoice_of(drafted.buyer_b)
    client = signed_in(finance)
    url = reverse("portal:finance-invoice", args=[draft.pk])
    page = client.get(url).content.decode()
    assert "Issue invoice" in page and "Mark paid" not in page
    # not confirmed: the error sits beside the box, and nothing changed
    refused = client.post(reverse("portal:finance-invoice-issue", args=[draft.pk]), {})
    assert refused.status_code == 400
    assert "Tick this" in _field_error(refused.content.decode(), "issue-confirm")
    assert _invoice_of(drafted.buyer_b).status == "draft"

    issued = client.post(
        reverse("portal:finance-invoice-issue", args=[draft.pk]),
        {"issue-confirm": "on"},
        follow=True,
    )
    invoice = _invoice_of(drafted.buyer_b)
    assert invoice.status == "open" and invoice.number
    assert f"Invoice {invoice.number} issued" in issued.content.decode()
    assert balance(drafted.buyer_b, "receivable") == invoice.amount_due_micros > 0

    missing = client.post(reverse("portal:finance-invoice-mark-paid", args=[invoice.pk]), {})
    html = missing.content.decode()
    assert missing.status_code == 400
    assert "reference" in _field_error(html, "paid-payment_reference")
    assert "Tick this" in _field_error(html, "paid-confirm")
    paid = client.post(
        reverse("portal:finance-invoice-mark-paid", args=[invoice.pk]),
        {"paid-payment_reference": "bank 2026-11-20", "paid-confirm": "on"},
        follow=True,
    )
    invoice.refresh_from_db()
    assert invoice.status == "paid" and invoice.payment_reference == "bank 2026-11-20"
    assert f"Invoice {invoice.number} marked paid" in paid.content.decode()
    assert balance(drafted.buyer_b, "receivable") == 0
    # a paid invoice can no longer be voided: the service's refusal shows on the page
    voided = client.post(
        reverse("portal:finance-invoice-void", args=[invoice.pk]),
        {"void-reason": "late", "void-confirm": "on"},
    )
    assert voided.status_code == 400 and "it cannot be voided" in voided.content.decode()


def test_finance_voids_an_open_invoice_with_a_reason(finance, drafted):
    period_close(period=PERIOD, now=CLOSE_AT)
    invoice = _invoice_of(drafted.buyer_b)
    credit = balance(drafted.buyer_b, "credit")
    client = signed_in(finance)
    url = reverse("portal:finance-invoice-void", args=[invoice.pk])
    refused = client.post(url, {"void-confirm": "on"})
    assert refused.status_code == 400
    assert "Say why" in _field_error(refused.content.decode(), "void-reason")
    done = client.post(url, {"void-reason": "billed the wrong entity", "void-confirm": "on"})
    assert done.status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == "void"
    assert balance(drafted.buyer_b, "receivable") == 0
    assert balance(drafted.buyer_b, "credit") == credit + invoice.prepaid_applied_micros


def test_invoice_actions_refuse_members_strangers_unknown_ids_and_forged_posts(
    finance, person, drafted
):
    draft = _invoice_of(drafted.buyer_b)
    actions = [
        ("portal:finance-invoice-issue", {"issue-confirm": "on"}),
        ("portal:finance-invoice-void", {"void-reason": "x", "void-confirm": "on"}),
        ("portal:finance-invoice-mark-paid", {"paid-payment_reference": "x", "paid-confirm": "on"}),
    ]
    member = signed_in(person(org=finance.organization, role="member"))
    buyer = signed_in(person("buyer"))
    forged = signed_in(finance, enforce_csrf_checks=True)
    for name, body in actions:
        url = reverse(name, args=[draft.pk])
        assert member.post(url, body).status_code == 403, name
        assert buyer.post(url, body).status_code == 404, name
        assert forged.post(url, body).status_code == 403, name  # no CSRF token
        assert signed_in(finance).get(url).status_code == 405, name
        missing = reverse(name, args=[draft.pk + 10_000])
        assert signed_in(finance).post(missing, body).status_code == 404, name
    assert _invoice_of(drafted.buyer_b).status == "draft"


# --- exports: progress while running ------------------------------------------------


def test_the_exports_list_polls_while_an_export_runs_and_stops_when_done(finance):
    export = FinanceExport.objects.create(
        kind="ar_aging",
        format="xlsx",
        status="running",
        rows_written=40,
        rows_total=100,
        requested_by=finance.email,
        created_at=timezone.now(),
    )
    client = signed_in(finance)
    page = client.get(reverse("portal:finance-exports")).content.decode()
    assert f'hx-get="{reverse("portal:finance-export-rows")}?page=1"' in page
    assert '<progress max="100" value="40"' in page and "XLSX" in page
    rows = client.get(reverse("portal:finance-export-rows")).content.decode()
    assert "<html" not in rows and "hx-trigger" in rows and "40 of 100 rows" in rows
    FinanceExport.objects.filter(pk=export.pk).update(
        status="succeeded", rows_written=100, file_name="ar_aging-1.xlsx"
    )
    rows = client.get(reverse("portal:finance-export-rows")).content.decode()
    assert "hx-trigger" not in rows and "Download ar_aging-1.xlsx" in rows
    form = client.get(reverse("portal:finance-exports")).content.decode()
    for value, label in (("csv", "CSV"), ("parquet", "Parquet"), ("xlsx", "XLSX (Excel)")):
        assert f'<option value="{value}">{label}</option>' in form


# --- query counts: the same with 1 row and with many --------------------------------


def _fill(person, provider, rows: int) -> None:
    for n in range(rows):
        buyer = person("buyer").organization
        _grant(buyer, 1_000_000 + n, f"q-{buyer.pk}")
        make_invoice(buyer, n % 4)
        ledger.account_open(organization=provider, kind="payable", currency="USD")
    FinanceExport.objects.bulk_create(
        FinanceExport(
            kind="ar_aging",
            format="csv",
            status="running",
            requested_by="f@example.com",
            created_at=timezone.now(),
        )
        for _ in range(rows)
    )
    account, _ = ConnectedAccount.objects.get_or_create(
        organization=provider, defaults={"account_id": f"acct_{provider.pk}", "country": "US"}
    )
    Payout.objects.bulk_create(
        Payout(
            organization=provider,
            connected_account=account,
            amount_micros=1_000_000,
            currency="USD",
            status="paid",
            transfer_id=f"tr_{provider.pk}_{rows}_{i}",
        )
        for i in range(rows)
    )


def test_the_new_pages_cost_the_same_queries_with_1_and_with_many_rows(
    finance, person, django_assert_max_num_queries
):
    counts: dict[str, list[int]] = {}
    provider = person("provider").organization
    for rows in (1, 26):
        _fill(person, provider, rows)
        for name in NEW_PAGES:
            with django_assert_max_num_queries(40), CaptureQueriesContext(connection) as seen:
                response = signed_in(finance).get(reverse(name))
            assert response.status_code == 200, name
            counts.setdefault(name, []).append(len(seen.captured_queries))
    for name, (few, many) in counts.items():
        assert few == many, f"{name}: {few} queries with 1 row, {many} with 26"
