from __future__ import annotations

import pytest

from core.models import Organization
from ledger import services
from ledger.models import Account


@pytest.fixture
def make_buyer():
    def make(name: str = "buyer", credits_micros: int = 0) -> Account:
        org = Organization.objects.create(name=name, kind="buyer")
        account = services.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
        if credits_micros:
            services.credits_grant(
                organization=org,
                amount_micros=credits_micros,
                currency="USD",
                reason="test credits",
                transfer_id=f"seed:{name}",
            )
        return account

    return make


@pytest.fixture
def revenue() -> Account:
    return services.platform_account(kind=Account.Kind.REVENUE, currency="USD")
