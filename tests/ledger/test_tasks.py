"""Ledger actors through the real broker (Redis in the suite) and a real worker."""

from __future__ import annotations

from datetime import timedelta

import dramatiq
import pytest
from django.utils import timezone
from dramatiq import Worker

from core.models import Organization
from ledger import services
from ledger.engine import HoldRequest
from ledger.models import Account, Balance, Hold
from ledger.tasks import holds_expire_task

pytestmark = pytest.mark.django_db(transaction=True)


def test_expiry_actor_releases_holds_whose_time_ran_out():
    # given a hold that expired a minute ago
    org = Organization.objects.create(name="sweep-buyer", kind="buyer")
    credit = services.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
    services.credits_grant(
        organization=org,
        amount_micros=5_000_000,
        currency="USD",
        reason="seed",
        transfer_id="sweep-seed",
    )
    revenue = services.platform_account(kind=Account.Kind.REVENUE, currency="USD")
    past = timezone.now() - timedelta(minutes=2)
    [created] = services.ledger_execute(
        [
            HoldRequest(
                "sweep-1", credit.pk, revenue.pk, 4_000_000, "USD", past + timedelta(minutes=1)
            )
        ],
        now=past,
    )
    assert created.status == "posted"
    assert Balance.objects.get(account=credit).debits_pending == 4_000_000

    # when the actor runs on a worker fed by the broker
    broker = dramatiq.get_broker()
    broker.flush_all()
    holds_expire_task.send()
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        broker.join(holds_expire_task.queue_name, timeout=30_000)
        worker.join()
    finally:
        worker.stop()

    # then the hold is expired and the reservation released
    assert Hold.objects.get(hold_id="sweep-1").state == "expired"
    assert Balance.objects.get(account=credit).debits_pending == 0
