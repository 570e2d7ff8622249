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


CONTINUED = """
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
from django.utils.module_loading import autodiscover_modules
call_command("migrate", verbosity=0)
autodiscover_modules(*settings.DRAMATIQ_AUTODISCOVER_MODULES)
from core import services as core
from core.followers import followers_run_until_idle
from ledger import services as billing
from marketplace.assignments.models import Assignment
from marketplace.services import matching_round
from marketplace.workloads import demo as workloads
from marketplace.workloads.followers import WorkloadsFollower
from providers import demo as supply
provider = core.org_create(name="P", kind="provider")
buyer = core.org_create(name="B", kind="buyer")
supply.load(provider=provider)
billing.credits_grant(organization=buyer, amount_micros=25_000_000, currency="USD",
                      reason="welcome credits", transfer_id="demo:welcome")
job = workloads.load(buyer=buyer, provider=provider)
more = workloads.continued(job=job)
again = workloads.continued(job=job)
final = job.checkpoints.get(is_final=True)
print(more.pk == again.pk, more.from_checkpoint == f"{job.public_id}:{final.step}",
      more.status, more.model == job.model,
      more.hyperparameters["lora_r"] == job.hyperparameters["lora_r"])
# the market takes it from there: leased, its training queued for the node's agent
matching_round()
followers_run_until_idle([WorkloadsFollower()])
more.refresh_from_db()
train = Assignment.objects.get(kind="train", workload_id=more.public_id)
print(more.status, train.state, train.spec["init_from"] is not None)
"""


def test_the_demo_continues_its_fine_tune_from_the_checkpoint(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "demo",
        "TANDEM_VAR_DIR": str(tmp_path),
    }
    env.pop("DRAMATIQ_BROKER_URL", None)
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", CONTINUED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    # one continued job, from the first job's final checkpoint, with its base model
    # and LoRA shape; queued, not trained by the demo
    assert lines[-2].split() == ["True", "True", "queued", "True", "True"]
    # a matching round leases it and its training waits for the node's agent,
    # starting from the checkpoint's weights
    assert lines[-1].split() == ["running", "queued", "True"]
