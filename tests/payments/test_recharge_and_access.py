"""Auto-recharge (once per threshold crossing, daily cap), Checkout Sessions, and who
may read or do what."""

from __future__ import annotations

import pytest

from core.followers import followers_run_until_idle
from ledger import services as ledger
from ledger.models import Account
from payments import services
from payments.models import AutoRecharge, StripeCustomer, TopUp
from payments.recharge import auto_recharge_follower
from payments.webhooks import stripe_event_process
from tests.payments.conftest import make_event, signed


def _spend(org, micros: int, transfer_id: str) -> None:
    credit = ledger.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
    revenue = ledger.platform_account(kind=Account.Kind.REVENUE, currency="USD")
    ledger.transfer_create(
        transfer_id=transfer_id,
        debit_account_id=credit.pk,
        credit_account_id=revenue.pk,
        amount_micros=micros,
        currency="USD",
    )


@pytest.mark.django_db
def test_auto_recharge_fires_once_per_crossing_and_stops_at_the_daily_cap(cast, webhook_secret):
    # given: $30 of credit, recharge $20 below $10, at most $40 a day, a saved card
    org = cast.buyer_a
    ledger.credits_grant(
        organization=org, amount_micros=30_000_000, currency="USD", reason="t", transfer_id="g1"
    )
    StripeCustomer.objects.create(
        organization=org, customer_id="cus_a", default_payment_method="pm_card_visa"
    )
    buyer = cast.client(org, role="admin")
    response = buyer.put(
        "/api/v1/billing/auto-recharge",
        {"enabled": True, "threshold": "10.00", "amount": "20.00", "daily_cap": "40.00"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    followers_run_until_idle([auto_recharge_follower])  # catch up with the grant

    # when: spending crosses the threshold, and keeps spending below it
    _spend(org, 25_000_000, "spend-1")  # $5 left: below $10
    _spend(org, 1_000_000, "spend-2")  # still below: no second charge
    followers_run_until_idle([auto_recharge_follower])
    # then: exactly one auto-recharge top-up
    first = list(TopUp.objects.filter(organization=org, source=TopUp.Source.AUTO_RECHARGE))
    assert [t.amount_micros for t in first] == [20_000_000]
    assert AutoRecharge.objects.get(organization=org).armed is False

    # when: the recharge is paid (credit $24 again: re-armed) and spent below again
    _credit_by_webhook(cast, first[0], "evt_ar_1")
    _spend(org, 20_000_000, "spend-3")  # $4 left
    followers_run_until_idle([auto_recharge_follower])
    second = TopUp.objects.filter(organization=org, source=TopUp.Source.AUTO_RECHARGE)
    assert second.count() == 2
    _credit_by_webhook(cast, second.order_by("pk").last(), "evt_ar_2")

    # and a third crossing the same day would pass the $40 cap: skipped
    _spend(org, 20_000_000, "spend-4")
    followers_run_until_idle([auto_recharge_follower])
    assert TopUp.objects.filter(organization=org, source=TopUp.Source.AUTO_RECHARGE).count() == 2
    assert buyer.get("/api/v1/billing/auto-recharge").json()["crossings"] == 3

    # another org cannot read or change this setting
    other = cast.client(cast.buyer_b, role="admin")
    assert other.get("/api/v1/billing/auto-recharge").json() == {"enabled": False}
    member = cast.client(org, role="member")
    assert (
        member.put(
            "/api/v1/billing/auto-recharge",
            {"enabled": False, "threshold": "1.00", "amount": "20.00", "daily_cap": "40.00"},
            format="json",
        ).status_code
        == 403
    )


def _credit_by_webhook(cast, top_up: TopUp, event_id: str) -> None:
    intent = {
        "id": f"pi_{event_id}",
        "object": "payment_intent",
        "amount": top_up.amount_micros // 10_000,
        "amount_received": top_up.amount_micros // 10_000,
        "currency": "usd",
        "status": "succeeded",
        "metadata": {"tandem_top_up": str(top_up.pk)},
    }
    body, header = signed(make_event(event_id, "payment_intent.succeeded", intent))
    response = cast.anonymous.post(
        "/api/v1/stripe/webhook",
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 200
    stripe_event_process(event_id=event_id)


@pytest.mark.django_db
def test_a_checkout_session_top_up_is_credited_by_checkout_session_completed(cast, fake_stripe):
    buyer = cast.client(cast.buyer_a, role="finance")
    response = buyer.post(
        "/api/v1/billing/top-ups/checkout",
        {
            "amount": "75.00",
            "success_url": "https://tandem.test/paid",
            "cancel_url": "https://tandem.test/cancel",
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="checkout-1",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["checkout_url"].startswith("https://checkout.stripe.test/c/pay/cs_test_")
    [request] = fake_stripe.made("POST", "/v1/checkout/sessions")
    assert request.idempotency_key == f"tandem-topup-{body['id']}"
    assert request.params["mode"] == "payment"
    assert request.params["line_items[0][price_data][unit_amount]"] == "7500"
    assert request.params["line_items[0][price_data][currency]"] == "usd"
    assert request.params["client_reference_id"] == str(body["id"])
    assert request.params["payment_intent_data[metadata][tandem_top_up]"] == str(body["id"])
    assert request.params["success_url"] == "https://tandem.test/paid"

    session = {
        **fake_stripe.examples["checkout.session"],
        "id": body["checkout_session_id"],
        "client_reference_id": str(body["id"]),
        "metadata": {"tandem_top_up": str(body["id"])},
        "payment_status": "paid",
        "status": "complete",
        "amount_total": 7500,
        "currency": "usd",
        "payment_intent": "pi_from_checkout",
    }
    for event_id in ("evt_cs_1", "evt_cs_1", "evt_cs_2"):  # a redelivery and a duplicate
        raw, header = signed(make_event(event_id, "checkout.session.completed", session))
        assert (
            cast.anonymous.post(
                "/api/v1/stripe/webhook",
                raw,
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=header,
            ).status_code
            == 200
        )
        stripe_event_process(event_id=event_id)
    top_up = TopUp.objects.get(pk=body["id"])
    assert (top_up.status, top_up.credited_micros) == (TopUp.Status.SUCCEEDED, 75_000_000)
    credit = ledger.account_open(
        organization=cast.buyer_a, kind=Account.Kind.CREDIT, currency="USD"
    )
    assert credit.balance.credits_posted == 75_000_000


@pytest.mark.django_db
def test_each_caller_sees_only_its_own_payments_and_only_finance_refunds(cast):
    mine = TopUp.objects.create(
        organization=cast.buyer_a,
        amount_micros=10_000_000,
        currency="USD",
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key="a",
        status=TopUp.Status.SUCCEEDED,
    )
    TopUp.objects.create(
        organization=cast.buyer_b,
        amount_micros=20_000_000,
        currency="USD",
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key="b",
    )
    buyer_a = cast.client(cast.buyer_a, role="admin")
    buyer_b = cast.client(cast.buyer_b, role="admin")
    assert [t["id"] for t in buyer_a.get("/api/v1/billing/top-ups").json()["results"]] == [mine.pk]
    assert buyer_a.get(f"/api/v1/billing/top-ups/{mine.pk}").status_code == 200
    assert buyer_b.get(f"/api/v1/billing/top-ups/{mine.pk}").status_code == 404
    assert cast.client(cast.provider_a).get(f"/api/v1/billing/top-ups/{mine.pk}").status_code == 404
    assert cast.anonymous.get("/api/v1/billing/top-ups").status_code == 401
    assert len(cast.finance.get("/api/v1/billing/top-ups").json()["results"]) == 2

    # refunds: the buyer's own admin and finance, other orgs and anonymous are refused
    for client, code in [
        (buyer_a, 403),
        (cast.client(cast.buyer_a, role="finance"), 403),
        (buyer_b, 403),
        (cast.client(cast.provider_a), 403),
        (cast.anonymous, 401),
    ]:
        response = client.post(
            f"/api/v1/billing/top-ups/{mine.pk}/refunds",
            {"amount": "1.00", "reason": "x"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="r",
        )
        assert response.status_code == code
    # starting top-ups: members may not spend; providers are not buyers
    assert (
        cast.client(cast.buyer_a, role="member")
        .post(
            "/api/v1/billing/top-ups", {"amount": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="m"
        )
        .status_code
        == 403
    )
    provider = cast.client(cast.provider_a, role="admin").post(
        "/api/v1/billing/top-ups", {"amount": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="p"
    )
    assert provider.status_code == 403  # a provider-only org pays nothing in
    assert cast.client(cast.provider_a).get("/api/v1/billing/reconciliation").status_code == 403


@pytest.mark.django_db
def test_refund_input_is_checked_field_by_field(cast, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_unused"
    top_up = TopUp.objects.create(
        organization=cast.buyer_a,
        amount_micros=10_000_000,
        currency="USD",
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key="a",
    )
    for body, field in [
        ({"amount": "abc", "reason": "x"}, "amount"),
        ({"amount": 5, "reason": "x"}, "amount"),
        ({"amount": "1.00"}, "reason"),
    ]:
        response = cast.finance.post(
            f"/api/v1/billing/top-ups/{top_up.pk}/refunds",
            body,
            format="json",
            HTTP_IDEMPOTENCY_KEY=f"k-{field}-{body.get('amount')}",
        )
        assert response.status_code == 400, response.json()
        assert field in str(response.json()["error"]["details"])
    # an unpaid top-up cannot be refunded
    unpaid = cast.finance.post(
        f"/api/v1/billing/top-ups/{top_up.pk}/refunds",
        {"amount": "1.00", "reason": "x"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="unpaid",
    )
    assert unpaid.status_code == 409
    assert services.top_up_refundable(top_up=top_up) == 0
