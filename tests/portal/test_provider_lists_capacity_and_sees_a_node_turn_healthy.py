"""A provider admin signs in, creates a site and an agent key (and sees the command
with it, once), runs the real agent on a "node" (a subprocess with the example
inventory file), watches the node page turn healthy without reloading, and lists an
offer: a bad price is refused beside the field, a good one appears in the list."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.portal.conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "providers" / "examples" / "inventory.json"  # 8 × H100, "Northlake Hall A"


def test_a_provider_lists_capacity_and_sees_a_node_turn_healthy(live_server, page, person):
    admin = person("provider")
    sign_in(page, live_server, admin)
    expect(page.get_by_role("heading", name="Provider overview")).to_be_visible()
    section = page.get_by_role("navigation", name="Provider")

    # a site, named as the node's inventory file names it
    section.get_by_role("link", name="Sites").click()
    expect(page.get_by_text("No sites yet.")).to_be_visible()
    page.get_by_label("Name").fill("Northlake Hall A")
    page.get_by_label("Region").fill("us-east")
    page.get_by_label("Country").fill("US")
    page.get_by_role("button", name="Create site").click()
    expect(page.get_by_role("row", name=re.compile("Northlake Hall A"))).to_contain_text("us-east")

    # an agent key, shown once with the command to run on the node
    section.get_by_role("link", name="Agent keys").click()
    page.get_by_label("Name").fill("northlake-gpu-01")
    page.get_by_role("button", name="Create agent key").click()
    key_field = page.get_by_label("Agent key “northlake-gpu-01”")
    expect(key_field).to_have_value(re.compile(r"^tdm_[0-9a-f]{12}_\S+$"))
    key = key_field.input_value()
    expect(page.locator('[data-command="key-file"]')).to_have_text(
        f"python manage.py run_agent --server {live_server.url} --key-file /etc/tandem/agent.key"
    )
    page.get_by_role("link", name="Done").click()
    expect(page.get_by_role("row", name=re.compile("northlake-gpu-01"))).to_contain_text(
        "not registered yet"
    )
    assert key not in page.content()  # never shown again

    # the node's agent registers and sends a heartbeat a second
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "providers.agent",
            "--server",
            live_server.url,
            "--key",
            key,
            "--inventory",
            str(INVENTORY),
            "--interval",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        registered = agent.stdout.readline()  # the agent's first line, once registered
        assert "registered as" in registered, agent.stderr.read() if agent.poll() else registered

        section.get_by_role("link", name="Nodes").click()
        page.get_by_role("link", name="northlake-gpu-01").click()
        expect(page.get_by_role("heading", name="Node northlake-gpu-01")).to_be_visible()
        gpus = page.get_by_role("region", name="GPUs and their latest telemetry")
        expect(gpus.get_by_role("row")).to_have_count(9)  # the header and 8 GPUs
        expect(gpus.get_by_role("row").nth(1)).to_contain_text("H100 SXM 80GB")
        # healthy once heartbeats arrive: the page polls, nobody reloads it
        expect(page.locator("[data-health]")).to_have_text("Healthy", timeout=15_000)
        # an inventory file's heartbeats carry no measurements, and the page says so
        expect(gpus.get_by_role("row").nth(1)).to_contain_text("no telemetry")
        expect(page.get_by_text("reads its GPUs from an inventory file")).to_be_visible()
        expect(page.locator('[data-figure="leases"]')).to_contain_text("0 of 0 ended leases")
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        agent.stdout.close()
        agent.stderr.close()

    # an offer: a bad price is refused beside the field, a good one is listed
    section.get_by_role("link", name="Offers").click()
    expect(page.get_by_text("No offers yet.")).to_be_visible()
    page.get_by_role("link", name="List capacity").click()
    page.get_by_label("Node").select_option(label="northlake-gpu-01 (Northlake Hall A)")
    page.get_by_label("GPU model").select_option("h100-sxm-80gb")
    page.get_by_label("GPUs").fill("4")
    price = page.get_by_label("Price per GPU-hour (USD)")
    price.fill("0")
    page.get_by_role("button", name="List offer").click()
    expect(page.locator("#id_price_error")).to_have_text("The price must be above zero, e.g. 2.49.")
    expect(price).to_have_attribute("aria-invalid", "true")

    price.fill("2.49")
    page.get_by_role("button", name="List offer").click()
    expect(page.get_by_role("status")).to_contain_text("at 2.49 USD per GPU-hour")
    row = page.get_by_role("row", name=re.compile("northlake-gpu-01"))
    expect(row).to_contain_text("4 × H100 SXM 80GB")
    expect(row).to_contain_text("2.49 USD")
    expect(row).to_contain_text("Active")
