"""A provider admin whose GPUs were leased opens Earnings from the provider portal,
sees this month's earnings in the chart and in the table under it (what the books owe
them: their payable), opens the month's statement line by line, downloads it as CSV
(the same lines, amounts as decimal text with the currency), and finds on Payouts that
payouts wait for a Stripe account. Every page passes axe's WCAG 2.2 A/AA rules with no
console error."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from core.money import Money
from invoicing.statements import statement_compute
from tests.invoicing.world import balance, generate_month, record, settle
from tests.portal.conftest import accessible, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_provider_reviews_earnings_and_downloads_a_statement(live_server, page, person, cast):
    # given GPU time of the provider's, leased and rated into the books this month
    record(generate_month(cast, events_per_buyer=20))
    settle()
    owed = balance(cast.provider_a, "payable")
    assert owed > 0
    admin = person(org=cast.provider_a, role="admin")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    month = timezone.now().date().replace(day=1)

    # when they open Earnings from the provider portal
    sign_in(page, live_server, admin)
    page.get_by_role("navigation", name="Provider").get_by_role("link", name="Earnings").click()
    expect(page.get_by_role("heading", name="Earnings", exact=True)).to_be_visible()

    # then this month is charted and tabled at what the books owe them
    expect(page.locator("canvas[data-chart]")).to_have_attribute("data-chart-drawn", "true")
    row = page.locator("table[data-earnings-rows]").get_by_role(
        "row", name=re.compile(f"^{month:%B %Y}")
    )
    expect(row).to_contain_text("so far")
    expect(row).to_contain_text(str(Money(owed, "USD")))
    accessible(page, errors)

    # when they open the month's statement
    page.get_by_role("link", name=f"{month:%B %Y}", exact=True).click()
    expect(page.get_by_role("heading", name=f"Statement for {month:%B %Y}")).to_be_visible()
    expect(page.locator('[data-figure="net"]')).to_have_text(str(Money(owed, "USD")))
    statement = statement_compute(provider=cast.provider_a, period=month, currency="USD")
    expect(page.locator("table[data-statement-lines] tbody tr")).to_have_count(len(statement.lines))
    accessible(page, errors)

    # and download it as CSV
    with page.expect_download() as started:
        page.get_by_role("link", name="Download CSV").click()
    download = started.value
    assert download.suggested_filename == f"statement-{month:%Y-%m}.csv"
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))

    # then it holds the statement's lines, amounts as decimal text with the currency
    assert rows[0] == [
        "node",
        "gpu_model",
        "gpu_seconds",
        "gpu_hours",
        "gross",
        "platform_fee",
        "net_payable",
        "currency",
    ]
    assert rows[1:] == [
        [
            line.node,
            line.gpu_model,
            str(line.gpu_seconds),
            f"{line.gpu_seconds / 3600:.4f}",
            Money(line.gross_micros, "USD").format(),
            Money(line.fee_micros, "USD").format(),
            Money(line.gross_micros, "USD").format(),
            "USD",
        ]
        for line in statement.lines
    ]
    assert sum(Money.parse(row[6], "USD").amount_micros for row in rows[1:]) == owed

    # when they open Payouts, payouts wait for their Stripe account
    page.get_by_role("navigation", name="Provider").get_by_role("link", name="Payouts").click()
    expect(page.locator('[data-connect-state="none"]')).to_contain_text("No Stripe account yet")
    expect(page.get_by_role("button", name="Set up payouts with Stripe")).to_be_visible()
    expect(page.get_by_text("No payouts yet.")).to_be_visible()
    accessible(page, errors)
