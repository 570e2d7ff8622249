"""The operator's finance staff read October's revenue in the overview's chart and the
table under it, request October's revenue export as XLSX, watch the list update
itself while a worker writes it (no reload: the list polls while an export runs),
download the workbook and find in it what the table said, then open the
reconciliation: 0.00 unexplained. Every page passes axe's WCAG 2.2 A/AA rules with no
console error."""

from __future__ import annotations

import re

import pytest
from openpyxl import load_workbook
from playwright.sync_api import expect

from core.money import Money
from exports import services as exports
from exports.models import FinanceExport
from tests.invoicing.world import generate_month, platform, record, settle
from tests.portal.conftest import accessible, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_finance_runs_an_xlsx_export_and_opens_the_reconciliation(
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

    # when they sign in, October's revenue is drawn and tabled
    sign_in(page, live_server, finance)
    expect(page.locator("canvas[data-chart]")).to_have_attribute("data-chart-drawn", "true")
    october = page.locator("table[data-revenue-rows]").get_by_role(
        "row", name=re.compile("^2026-10 ")
    )
    expect(october.locator("td").last).to_have_text(str(Money(earned, "USD")))
    accessible(page, errors)

    # when they request October's revenue as XLSX
    page.get_by_role("navigation", name="Finance").get_by_role("link", name="Exports").click()
    page.get_by_label("Kind").select_option("revenue")
    page.get_by_label("Format").select_option(label="XLSX (Excel)")
    page.get_by_role("textbox", name="Period").fill("2026-10")
    page.get_by_role("button", name="Request export").click()
    export = FinanceExport.objects.get()
    assert (export.kind, export.format) == ("revenue", "xlsx")
    row = page.locator(f'tr[data-export="{export.pk}"]')
    expect(row.locator("[data-export-state]")).to_have_text("queued")
    expect(page.locator("[data-exports-running]")).to_contain_text("refreshes every")
    accessible(page, errors)

    # then a worker writes it, and the list shows it done without a reload
    exports.export_run(export_id=export.pk)
    expect(row.locator("[data-export-state]")).to_have_text("succeeded", timeout=15_000)
    expect(page.locator("[data-exports-running]")).to_have_count(0)
    accessible(page, errors)
    with page.expect_download() as started:
        row.get_by_role("link", name=re.compile("Download revenue")).click()
    download = started.value
    assert download.suggested_filename == f"revenue-{export.pk}.xlsx"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)

    # and the workbook holds October's revenue by product, adding up to the table
    sheet = load_workbook(saved, read_only=True).active
    rows = list(sheet.iter_rows(values_only=True))
    header, body = rows[0], rows[1:]
    assert header[:3] == ("month", "currency", "product")
    column = {name: n for n, name in enumerate(header)}
    assert body and {r[column["month"]] for r in body} == {"2026-10"}
    assert sum(r[column["total_micros"]] for r in body) == earned
    products = {r[column["product"]] for r in body}
    assert {"inference", "fine_tune", "gpu_lease"} <= products
    for r in body:  # decimal text beside each integer amount
        assert r[column["total"]] == Money(r[column["total_micros"]], "USD").format()

    # when they open the reconciliation: nothing is unexplained
    page.get_by_role("navigation", name="Finance").get_by_role(
        "link", name="Reconciliation"
    ).click()
    expect(page.get_by_role("heading", name="Reconciliation", exact=True)).to_be_visible()
    expect(page.locator('[data-figure="unexplained"]')).to_contain_text("0.00 USD")
    # usage charged but not invoiced yet is listed, with its cause, as explained
    differences = page.locator("table[data-reconciliation-differences]")
    expect(differences).to_contain_text("not yet on a finalized invoice")
    accessible(page, errors)
