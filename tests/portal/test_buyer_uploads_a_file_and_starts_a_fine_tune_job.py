"""A buyer uploads a dataset (a bad one first: the line at fault is named beside the
field), prices a fine-tune of it, starts it, watches its loss per step arrive on the
job's page without reloading it (htmx polling), and cancels it. Every page passes
axe's WCAG 2.2 A/AA rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from core.money import Money
from marketplace.models import Order
from marketplace.workloads import jobs
from marketplace.workloads.models import FineTuneJob
from pricing.welcome import welcome_credit_grant
from tests.portal.conftest import accessible, sign_in
from tests.workloads.conftest import SAMPLE_CHAT, jsonl

pytestmark = pytest.mark.django_db(transaction=True)


def test_buyer_uploads_a_file_and_starts_a_fine_tune_job(
    live_server, page, person, tmp_path: Path, settings
):
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"
    buyer = person("buyer")
    welcome_credit_grant(organization=buyer.organization)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([*SAMPLE_CHAT[:2], {"messages": [{"role": "user", "content": "Hi"}]}]))
    good = tmp_path / "adder.jsonl"
    good.write_bytes(jsonl(SAMPLE_CHAT))
    sign_in(page, live_server, buyer)

    # given the files page, reached from the console's navigation
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Files").click()
    expect(page.get_by_role("heading", name="Files", exact=True)).to_be_visible()
    accessible(page)

    # when a dataset with a bad line is uploaded, the line is named beside the field
    page.locator("#id_file").set_input_files(bad)
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#id_file_error")).to_contain_text("line 3")
    accessible(page)

    # and a good one is stored and checked
    page.locator("#id_file").set_input_files(good)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("Uploaded adder.jsonl")
    expect(page.get_by_role("row", name=re.compile("adder.jsonl"))).to_contain_text("8 examples")

    # when they price a fine-tune of it
    console = page.get_by_role("navigation", name="Console")
    console.get_by_role("link", name="Fine-tune jobs").click()
    page.get_by_role("link", name="New fine-tune job").click()
    page.get_by_label("Training file").select_option(label="adder.jsonl (8 examples)")
    page.get_by_label("Epochs").fill("2")
    page.get_by_role("button", name="Estimate cost").click()

    # then the estimate is shown before anything starts
    estimate = page.locator('[data-figure="estimate"]')
    expect(estimate).to_have_text(re.compile(r"^\d+\.\d{2,6} USD$"))
    estimated = estimate.text_content()
    assert not FineTuneJob.objects.exists()
    accessible(page)

    # when they start it
    page.get_by_role("button", name="Start job").click()
    expect(page.get_by_role("heading", name=re.compile("Fine-tune job"))).to_be_visible()
    job = FineTuneJob.objects.get(organization=buyer.organization)
    assert str(Money(job.estimate_micros, job.currency)) == estimated  # what they were shown
    expect(page.locator('[data-status="queued"]')).to_be_visible()
    expect(page.get_by_text("No training steps yet")).to_be_visible()
    accessible(page)

    # then the runtime's steps appear while the page is open, without a reload
    FineTuneJob.objects.filter(pk=job.pk).update(status="running")
    for step, loss in [(1, 2.25), (2, 1.5)]:
        jobs.finetune_job_progress(
            job_id=job.public_id,
            kind="training_step",
            message=f"Step {step}/4: training loss={loss:.4f}",
            at=timezone.now(),
            source_position=50_000 + step,
            step=step,
            total_steps=4,
            data={"step": step, "total_steps": 4, "loss": loss, "learning_rate": 0.0001},
        )
    loss_table = page.locator("table[data-loss]")
    expect(loss_table).to_contain_text("1.5000", timeout=15_000)
    expect(loss_table.get_by_role("row")).to_have_count(3)  # the header and two steps
    expect(page.locator('[data-status="running"]')).to_be_visible()
    expect(page.get_by_text("Step 2 of 4.")).to_be_visible()
    accessible(page)

    # when they cancel it (back to queued: waiting for GPUs, so nothing is billed)
    FineTuneJob.objects.filter(pk=job.pk).update(status="queued")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.get_by_role("status")).to_contain_text("nothing was billed")
    expect(page.locator('[data-status="cancelled"]')).to_be_visible()
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert Order.objects.get(pk=int(job.order_ref)).state == "cancelled"
    accessible(page)
