"""The demo loader on the embedded default: SQLite, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from ledger import services as billing
from core import services as core
from marketplace import demo
from marketplace.models import Lease
from providers import demo as supply
from ledger.models import Hold
provider = core.org_create(name="P", kind="provider")
buyer = core.org_create(name="B", kind="buyer")
supply.load(provider=provider)
billing.credits_grant(organization=buyer, amount_micros=25_000_000, currency="USD",
                      reason="welcome credits", transfer_id="demo:welcome")
demo.load(buyer=buyer, provider=provider)
demo.load(buyer=buyer, provider=provider)
ended = Lease.objects.get(state="ended")
active = Lease.objects.get(state="active")
held = Hold.objects.get(hold_id=ended.hold_id)
print(ended.gpu_seconds_billed, held.state, held.posted_micros, active.gpu_model,
      Lease.objects.count())
first = demo.endpoint(buyer=buyer)
again = demo.endpoint(buyer=buyer)
from marketplace.workloads.models import Deployment
replica = Deployment.objects.get(dedicated__endpoint=first)
order_lease = Lease.objects.filter(order_id=int(replica.order_ref)).get()
print(first.pk == again.pk, first.name, order_lease.gpu_model, order_lease.managed)
"""


def test_demo_loads_on_sqlite(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "demo",
    }
    env.pop("DRAMATIQ_BROKER_URL", None)
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # an hour of one L40S at $0.90, plus the 10% fee; one lease running; loaded once
    lines = done.stdout.strip().splitlines()
    assert lines[-2].split() == ["3600", "posted", "990000", "h100-sxm-80gb", "2"]
    # a dedicated endpoint, once: its replica leased on an H100, billed to the buyer
    assert lines[-1].split() == ["True", "demo-assistant", "h100-sxm-80gb", "False"]
