import pytest
from datetime import timedelta
from billing import services
from billing.models import Balance

pytestmark = pytest.mark.django_db

def test_smoke(make_buyer, revenue):
    buyer = make_buyer("b1", 10_000_000)
    r = services.transfer_create(transfer_id="t1", debit_account_id=buyer.pk, credit_account_id=revenue.pk, amount_micros=3_000_000, currency="USD")
    assert r.status == "posted"
    r2 = services.transfer_create(transfer_id="t1", debit_account_id=buyer.pk, credit_account_id=revenue.pk, amount_micros=3_000_000, currency="USD")
    assert r2.status == "replayed" and r2.position == r.position
    h = services.hold_create(hold_id="h1", debit_account_id=buyer.pk, credit_account_id=revenue.pk, amount_micros=5_000_000, currency="USD", timeout=timedelta(minutes=5))
    b = Balance.objects.get(account=buyer)
    assert (b.debits_posted, b.credits_posted, b.debits_pending) == (3_000_000, 10_000_000, 5_000_000)
    services.hold_post(hold_id="h1", amount_micros=2_000_000)
    b.refresh_from_db()
    assert (b.debits_posted, b.debits_pending) == (5_000_000, 0)
    assert services.balances_rebuild() == 0
