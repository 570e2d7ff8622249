"""A buyer opens Usage from the console, sees this month's tokens by day and product
with their cost, narrows it to one product (an empty period says what to do next),
and downloads the rows as CSV: the same rows, amounts as decimal text with their
currency. Then they switch to their other organization, whose usage is its own.
Every page passes axe's WCAG 2.2 A/AA rules."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from core import services as tenancy
from core.money import Money
from pricing.book import rate_for
from pricing.rating import rate_quantity
from tests.portal.conftest import accessible, sign_in
from tests.portal.test_buyer_work_pages import TINY, start_job, training_tokens

pytestmark = pytest.mark.django_db(transaction=True)


def test_buyer_reviews_usage_and_downloads_it_as_csv(live_server, page, person, tmp_path, settings):
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"
    buyer = person("buyer")
    job = start_job(buyer.organization)
    used_at = timezone.now() - timedelta(minutes=2)
    training_tokens(job, n=4, quantity=25_000, at=used_at)
    dims = {"model": TINY, "training_type": "lora-sft"}
    cost = rate_quantity(rate_for("tokens.training", dims, used_at), 100_000, dims).amount_micros
    other = person("buyer")
    tenancy.membership_create(user=buyer.user, organization=other.organization, role="finance")
    sign_in(page, live_server, buyer)

    # when they open Usage from the console
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()

    # then this month's rows show the tokens and their cost, with the currency
    row = page.locator("table[data-usage-rows]").get_by_role(
        "row", name="Fine-tuning: training tokens"
    )
    expect(row).to_contain_text("100000 tokens")
    expect(row).to_contain_text(str(Money(cost, "USD")))
    expect(page.locator('[data-figure="usage-total"]')).to_have_text(str(Money(cost, "USD")))
    accessible(page)

    # when they narrow it to inference output tokens, nothing is there
    page.get_by_label("Product").select_option(label="Inference: output tokens")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_text("No usage in this period for this product")).to_be_visible()
    expect(page.get_by_label("Product")).to_have_value("tokens.completion")
    accessible(page)

    # when they show every product again and download the CSV
    page.get_by_label("Product").select_option(label="All products")
    page.get_by_role("button", name="Show").click()
    with page.expect_download() as started:
        page.get_by_role("link", name="Download CSV").click()
    download = started.value
    assert download.suggested_filename.startswith("usage-")
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))

    # then it holds the page's rows
    assert rows == [
        ["day", "product", "model", "quantity", "unit", "cost", "currency"],
        [
            used_at.date().isoformat(),
            "Fine-tuning: training tokens",
            TINY,
            "100000",
            "tokens",
            Money(cost, "USD").format(),
            "USD",
        ],
    ]

    # when they switch to their other organization, its usage is its own (none)
    page.get_by_label("Organization").select_option(label=f"{other.organization.name} (finance)")
    page.get_by_role("button", name="Switch").click()
    expect(page.get_by_role("status")).to_contain_text(f"Now working in {other.organization.name}")
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Usage").click()
    expect(page.get_by_text("No usage in this period")).to_be_visible()
    accessible(page)
