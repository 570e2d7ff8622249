from __future__ import annotations

import pytest

from core.followers import followers_run_until_idle
from ledger import services
from ledger.models import Account, Balance
from metering.demo import load
from metering.models import UsageEvent
from pricing.services import usage_rating
from tests.subjects import deployment_of, job_of, lease_unheld

pytestmark = pytest.mark.django_db


def test_the_demo_usage_loads_twice_and_is_rated_once(cast):
    services.credits_grant(
        organization=cast.buyer_a,
        amount_micros=25_000_000,
        currency="USD",
        reason="demo",
        transfer_id="demo-credits",
    )
    credit = services.account_open(
        organization=cast.buyer_a, kind=Account.Kind.CREDIT, currency="USD"
    )
    subjects = {
        "job": job_of(cast.buyer_a).public_id,
        "deployment": deployment_of(cast.buyer_a).public_id,
        # a lease billed by its usage (no hold), at $2.50/h
        "lease": lease_unheld(cast.buyer_a, cast.provider_a, price=2_500_000).usage_subject,
    }
    load(buyer=cast.buyer_a, **subjects)
    followers_run_until_idle([usage_rating])  # rated by pricing's follower
    first = Balance.objects.get(account=credit).debits_posted
    load(buyer=cast.buyer_a, **subjects)
    followers_run_until_idle([usage_rating])  # rated by pricing's follower
    assert UsageEvent.objects.count() == 6
    # 2.55M training/eval tokens at $0.48/M, 420k prompt at $0.10/M, 96k completion at
    # $0.20/M, 30 GPU-minutes at $2.50/h plus 10%
    assert (
        first
        == Balance.objects.get(account=credit).debits_posted
        == (1_224_000 + 42_000 + 19_200 + 1_375_000)
    )
    payable = services.account_open(
        organization=cast.provider_a, kind=Account.Kind.PAYABLE, currency="USD"
    )
    assert Balance.objects.get(account=payable).credits_posted == 1_250_000
