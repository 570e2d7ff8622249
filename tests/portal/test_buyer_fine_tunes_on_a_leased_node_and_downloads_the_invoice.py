"""A buyer fine-tunes a model end to end from the console: uploads a dataset, sees the
estimate, starts the job, and watches it train on the provider's node (the demo
node's real agent, which claims the job's lease and runs the trainer) until it has
succeeded, its loss per step arriving on the page without a reload; then, once the
job's invoice is issued, downloads it as a PDF. Every page passes axe's WCAG 2.2 A/AA
rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from core.models import Organization
from invoicing import services as invoicing
from marketplace.workloads.models import FineTuneJob
from pricing.welcome import welcome_credit_grant
from tests.portal.conftest import accessible, sign_in
from tests.workloads.conftest import SAMPLE_CHAT, demo_node_agent, jsonl  # noqa: F401 - a fixture
from tests.workloads.market import buyer_credit, platform_running, provider_with_capacity

pytestmark = pytest.mark.django_db(transaction=True)


def test_buyer_fine_tunes_on_a_leased_node_and_downloads_the_invoice(
    live_server,
    page,
    person,
    demo_node_agent,  # noqa: F811 - the workloads' fixture, imported above
    tmp_path: Path,
    settings,
):
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"
    # given: a provider's node with its agent running, and a buyer with credit
    provider = Organization.objects.create(name="Northlake", kind="provider")
    provider_with_capacity(provider)
    demo_node_agent(provider)
    buyer = person("buyer")
    welcome_credit_grant(organization=buyer.organization)
    buyer_credit(buyer.organization, 25_000_000)
    dataset = tmp_path / "adder.jsonl"
    dataset.write_bytes(jsonl(SAMPLE_CHAT))
    sign_in(page, live_server, buyer)

    with platform_running():
        # when they upload the dataset
        console = page.get_by_role("navigation", name="Console")
        console.get_by_role("link", name="Files").click()
        page.locator("#id_file").set_input_files(dataset)
        page.get_by_role("button", name="Upload").click()
        expect(page.get_by_role("status")).to_contain_text("Uploaded adder.jsonl")

        # and price a fine-tune of it, then start it
        console.get_by_role("link", name="Fine-tune jobs").click()
        page.get_by_role("link", name="New fine-tune job").click()
        page.get_by_label("Training file").select_option(label="adder.jsonl (8 examples)")
        page.get_by_label("Epochs").fill("2")
        page.get_by_role("button", name="Estimate cost").click()
        expect(page.locator('[data-figure="estimate"]')).to_have_text(
            re.compile(r"^\d+\.\d{2,6} USD$")
        )
        accessible(page)
        page.get_by_role("button", name="Start job").click()
        expect(page.get_by_role("heading", name=re.compile("Fine-tune job"))).to_be_visible()

        # then the node trains it: its steps arrive on the open page, and it succeeds
        loss_table = page.locator("table[data-loss]")
        expect(loss_table.get_by_role("row").nth(1)).to_be_visible(timeout=240_000)
        expect(page.locator('[data-status="succeeded"]')).to_be_visible(timeout=240_000)
        job = FineTuneJob.objects.get(organization=buyer.organization)
        assert job.status == "succeeded" and job.fine_tuned_model
        assert job.steps_completed == job.total_steps
        expect(page.get_by_text(job.fine_tuned_model).first).to_be_visible()
        accessible(page)

    # when the job's invoice is issued (by the operator's finance staff, as the
    # invoicing API's job invoice is)
    invoice = invoicing.invoice_job_request(
        organization=buyer.organization, job=job.public_id, actor="finance@example.com"
    )
    assert invoice.number and invoice.total_micros > 0

    # then the buyer finds it among their invoices and downloads its PDF
    page.goto(f"{live_server.url}/console/invoices/")
    page.get_by_role("link", name=invoice.number).click()
    expect(page.get_by_role("heading", name=f"Invoice {invoice.number}")).to_be_visible()
    accessible(page)
    # (fetched with the page's own session, as the link does: browsers show a PDF inline)
    href = page.get_by_role("link", name="Download PDF").get_attribute("href")
    pdf = page.request.get(f"{live_server.url}{href}")
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body().startswith(b"%PDF-")
    assert invoice.number in pdf.headers.get("content-disposition", "")
