"""The demo loader on the embedded default (SQLite, no Stripe), twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
from payments import demo
from payments.models import ConnectedAccount, StripeEvent, TopUp
from ledger.models import Account, Balance
from core import services
from core.models import Organization

def org(name, kind):
    found = Organization.objects.filter(name=name).first()
    return found or services.org_create(name=name, kind=kind)

buyer, provider = org("Demo Buyer", "buyer"), org("Demo Provider", "provider")
made = [demo.load(buyer=buyer, provider=provider) for _ in range(2)]
credit = Account.objects.get(organization=buyer, kind="credit")
print(json.dumps({
    "made": made,
    "credits_posted": Balance.objects.get(account=credit).credits_posted,
    "top_ups": list(TopUp.objects.values_list("status", "credited_micros")),
    "events": StripeEvent.objects.filter(processed_at__isnull=False).count(),
    "account_status": ConnectedAccount.objects.get(organization=provider).status,
}))
"""


def test_the_demo_top_up_and_account_load_twice_on_sqlite_without_stripe(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "DRAMATIQ_BROKER_URL", "REDIS_URL", "STRIPE_"))
        and key != "SECRET_KEY"
    }
    env.update(DEBUG="1", TANDEM_VAR_DIR=str(tmp_path))

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    migrated = manage("migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    loaded = manage("shell", "-c", SCRIPT)
    assert loaded.returncode == 0, loaded.stderr
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert result["made"][0] == result["made"][1]
    assert result["credits_posted"] == 50_000_000  # credited once, by the webhook path
    assert result["top_ups"] == [["succeeded", 50_000_000]]
    assert result["events"] == 2
    assert result["account_status"] == "active"
