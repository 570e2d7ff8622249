"""The operator's finance staff sign in to the finance overview, read October's revenue
in the chart and in the table under it (what the platform's revenue and fee accounts
hold), close October from the month-close page, find its invoices finalized and
download one as PDF, then request the month's invoice register as CSV, watch it finish
and download it: one row per finalized invoice. Every page passes axe's WCAG 2.2 A/AA
rules with no console error (a blocked script would show there)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from core.money import Money
from exports import services as exports
from exports.models import FinanceExport
from invoicing.models import Invoice
from tests.invoicing.world import PERIOD, generate_month, platform, record, settle
from tests.portal.conftest import accessible, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_finance_closes_a_month_and_downloads_the_invoice_register(
    live_server, page, person, cast, settings, tmp_path
):
    settings.EXPORT_DIR = tmp_path / "exports"
    # given October 2026 of two buyers on two providers, rated into the ledger
    record(generate_month(cast, events_per_buyer=20))
    settle()
    earned = platform("revenue") + platform("fees")
    assert earned > 0
    finance = person(org=cast.operator, role="finance")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    # when they sign in, the finance overview is their home
    sign_in(page, live_server, finance)
    expect(page.get_by_role("heading", name="Finance", exact=True)).to_be_visible()
    # then October's revenue is drawn and tabled, as the revenue and fee accounts hold it
    expect(page.locator("canvas[data-chart]")).to_have_attribute("data-chart-drawn", "true")
    october = page.locator("table[data-revenue-rows]").get_by_role(
        "row", name=re.compile("^2026-10 ")
    )
    expect(october.locator("td").last).to_have_text(str(Money(earned, "USD")))
    accessible(page, errors)

    # when they close October from the month-close page
    page.get_by_role("navigation", name="Finance").get_by_role("link", name="Month close").click()
    expect(page.get_by_role("heading", name="Month close", exact=True)).to_be_visible()
    page.get_by_role("textbox", name="Month").fill("2026-10")
    page.get_by_role("button", name="Close the month").click()  # not confirmed yet
    expect(page.locator("#id_confirm_error")).to_contain_text("Tick this to confirm")
    accessible(page, errors=[])  # the 400 logs itself in the console
    errors.clear()
    page.get_by_label("I have checked the month: close it").check()
    page.get_by_role("button", name="Close the month").click()

    # then it is closed: every charged buyer's invoice finalized, none left a draft
    finalized = Invoice.objects.filter(period_start__date=PERIOD, kind="monthly")
    assert finalized.count() >= 2 and not finalized.filter(status="draft").exists()
    expect(page.get_by_role("status")).to_contain_text(
        f"2026-10 closed: {finalized.count()} invoices finalized"
    )
    row = page.locator("table[data-close-rows]").get_by_role("row", name=re.compile("^2026-10 "))
    expect(row).to_contain_text("closed")
    accessible(page, errors)

    # when they list October's invoices and open one
    page.get_by_role("navigation", name="Finance").get_by_role("link", name="Invoices").click()
    page.get_by_role("textbox", name="Period").fill("2026-10")
    page.get_by_role("button", name="Show").click()
    first = finalized.order_by("-period_start", "-pk").first()
    expect(page.locator("table[data-invoice-rows] tbody tr")).to_have_count(finalized.count())
    accessible(page, errors)
    page.get_by_role("link", name=first.number).click()
    expect(page.get_by_role("heading", name=f"Invoice {first.number}")).to_be_visible()
    expect(page.locator('[data-figure="total"]')).to_have_text(
        f"{Money(first.total_micros, 'USD').format()} USD"
    )
    accessible(page, errors)
    with page.expect_download() as started:
        page.get_by_role("link", name="Download PDF").click()
    assert Path(started.value.path()).read_bytes().startswith(b"%PDF")

    # when they request October's invoice register as CSV
    page.get_by_role("navigation", name="Finance").get_by_role("link", name="Exports").click()
    expect(page.get_by_text("No exports yet.")).to_be_visible()
    accessible(page, errors)
    page.get_by_label("Kind").select_option("invoice_register")
    page.get_by_label("Format").select_option("csv")
    page.get_by_role("textbox", name="Period").fill("2026-10")
    page.get_by_role("button", name="Request export").click()
    export = FinanceExport.objects.get()
    expect(page.get_by_role("status")).to_contain_text(f"Export {export.pk}")
    expect(page.locator("table[data-export-rows]")).to_contain_text("queued")
    # the worker runs it (what the dramatiq actor calls), and the list shows it done
    exports.export_run(export_id=export.pk)
    page.reload()
    expect(page.locator("table[data-export-rows]")).to_contain_text("succeeded")
    accessible(page, errors)
    with page.expect_download() as started:
        page.get_by_role("link", name=re.compile("Download invoice_register")).click()

    # then the file holds one row per finalized invoice of October
    text = Path(started.value.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(row["number"] for row in rows) == sorted(
        finalized.values_list("number", flat=True)
    )
