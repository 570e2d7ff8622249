"""The top-up journey against a running localstripe: a PaymentIntent confirmed there,
its signed webhook delivered to a live server, credit granted once; refunds claw
back; the buyer's balance and the trial balance agree."""

from __future__ import annotations

import time
import uuid

import pytest

from ledger import services as ledger
from ledger.models import Account, Balance
from payments import services
from payments.models import Refund, StripeEvent, TopUp
from payments.webhooks import stripe_event_process, stripe_events_process_pending
from tests.payments.conftest import make_event, signed


def _balance(org, kind: str) -> int:
    account = ledger.account_open(organization=org, kind=kind, currency="USD")
    b = Balance.objects.get(account=account)
    if account.normal_side == "C":
        return b.credits_posted - b.debits_posted
    return b.debits_posted - b.credits_posted


def _trial_balance_zero() -> None:
    debits = sum(b.debits_posted for b in Balance.objects.all())
    credits = sum(b.credits_posted for b in Balance.objects.all())
    assert debits == credits


def _wait_for_event(event_type: str, object_id: str, deadline_s: float = 15) -> StripeEvent:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = StripeEvent.objects.filter(type=event_type, object_id=object_id).first()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {event_type} webhook for {object_id} arrived")


@pytest.mark.django_db(transaction=True)
def test_a_confirmed_payment_intent_credits_once_through_the_signed_webhook(
    cast, stripe_on, live_server
):
    # given: localstripe delivers its webhooks to this test's live server
    stripe_on.register_webhook(
        f"tandem-{uuid.uuid4().hex[:8]}",
        f"{live_server.url}/api/v1/stripe/webhook",
        "whsec_test_payments",
    )
    buyer = cast.client(cast.buyer_a, role="admin")

    # when: the buyer asks for $25.00 and the Payment Element confirms it with a card
    response = buyer.post(
        "/api/v1/billing/top-ups",
        {"amount": "25.00"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="topup-1",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "requires_payment"
    assert body["client_secret"].startswith(body["payment_intent_id"])
    intent_id = body["payment_intent_id"]
    # nothing is credited on the client's word
    assert _balance(cast.buyer_a, Account.Kind.CREDIT) == 0
    stripe_on.post(f"/v1/payment_intents/{intent_id}", payment_method="pm_card_visa")
    stripe_on.post(f"/v1/payment_intents/{intent_id}/confirm")

    # then: the signed payment_intent.succeeded arrives, is stored, and credits $25 once
    event = _wait_for_event("payment_intent.succeeded", intent_id)
    assert event.processed_at is None  # stored by the request, processed by a worker
    stripe_event_process(event_id=event.event_id)
    stripe_event_process(event_id=event.event_id)
    stripe_events_process_pending()
    assert _balance(cast.buyer_a, Account.Kind.CREDIT) == 25_000_000
    assert _balance(None, Account.Kind.STRIPE_CLEARING) == 25_000_000
    top_up = TopUp.objects.get(payment_intent_id=intent_id)
    assert top_up.status == TopUp.Status.SUCCEEDED
    assert top_up.credited_micros == 25_000_000
    _trial_balance_zero()

    # a retried request replays the first answer and creates nothing new
    again = buyer.post(
        "/api/v1/billing/top-ups",
        {"amount": "25.00"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="topup-1",
    )
    assert again.status_code == 201
    assert again.json()["id"] == body["id"]
    assert TopUp.objects.count() == 1

    # when: finance refunds $10 of it
    finance = cast.finance
    refund = finance.post(
        f"/api/v1/billing/top-ups/{top_up.pk}/refunds",
        {"amount": "10.00", "reason": "unused credit returned"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="refund-1",
    )
    assert refund.status_code == 201, refund.json()
    assert refund.json()["status"] == "succeeded"
    assert refund.json()["stripe_refund_id"].startswith("re_")
    # then: localstripe holds the refund, and the ledger clawed back exactly $10
    refunds = stripe_on.get("/v1/refunds", payment_intent=intent_id)["data"]
    assert [r["amount"] for r in refunds] == [1000]
    assert _balance(cast.buyer_a, Account.Kind.CREDIT) == 15_000_000
    assert _balance(None, Account.Kind.STRIPE_CLEARING) == 15_000_000
    _trial_balance_zero()

    # the same refund reported by Stripe (charge.refunded) changes nothing more
    charge = stripe_on.get(f"/v1/charges/{top_up.charge_id or refunds[0]['charge']}")
    body_bytes, header = signed(make_event("evt_refunded_1", "charge.refunded", charge))
    delivered = cast.anonymous.post(
        "/api/v1/stripe/webhook",
        body_bytes,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert delivered.status_code == 200
    stripe_event_process(event_id="evt_refunded_1")
    assert _balance(cast.buyer_a, Account.Kind.CREDIT) == 15_000_000
    assert Refund.objects.count() == 1

    # more than the unused credit cannot be refunded
    too_much = finance.post(
        f"/api/v1/billing/top-ups/{top_up.pk}/refunds",
        {"amount": "15.01", "reason": "too much"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="refund-2",
    )
    assert too_much.status_code == 400
    assert too_much.json()["error"]["details"]["field"] == "amount"


@pytest.mark.django_db
def test_a_refund_reaches_only_as_far_as_the_unused_credit(cast, stripe_on):
    # given: a paid $40 top-up of which $30 was spent on usage
    top_up = _paid_top_up(cast.buyer_a, stripe_on, 40_00)
    revenue = ledger.platform_account(kind=Account.Kind.REVENUE, currency="USD")
    credit = ledger.account_open(
        organization=cast.buyer_a, kind=Account.Kind.CREDIT, currency="USD"
    )
    ledger.transfer_create(
        transfer_id="usage-1",
        debit_account_id=credit.pk,
        credit_account_id=revenue.pk,
        amount_micros=30_000_000,
        currency="USD",
    )
    # when: finance refunds everything refundable (no amount)
    refund = services.refund_create(
        top_up_id=top_up.pk, amount_micros=None, reason="closing the account", actor="test"
    )
    # then: $10, the unused credit, went back to the card; credit is now zero
    assert refund.amount_micros == 10_000_000
    assert refund.status == Refund.Status.SUCCEEDED
    assert _balance(cast.buyer_a, Account.Kind.CREDIT) == 0
    assert (
        stripe_on.get("/v1/refunds", payment_intent=top_up.payment_intent_id)["data"][0]["amount"]
        == 1000
    )


@pytest.mark.django_db
def test_a_refund_made_in_stripe_claws_back_credit_then_receivable(cast, stripe_on):
    # given: a paid $20 top-up, $15 of it spent
    top_up = _paid_top_up(cast.buyer_a, stripe_on, 20_00)
    revenue = ledger.platform_account(kind=Account.Kind.REVENUE, currency="USD")
    credit = ledger.account_open(
        organization=cast.buyer_a, kind=Account.Kind.CREDIT, currency="USD"
    )
    ledger.transfer_create(
        transfer_id="usage-2",
        debit_account_id=credit.pk,
        credit_account_id=revenue.pk,
        amount_micros=15_000_000,
        currency="USD",
    )
    # when: someone refunds the whole $20 in Stripe's dashboard (not through Tandem)
    stripe_refund = stripe_on.post("/v1/refunds", payment_intent=top_up.payment_intent_id)
    charge = stripe_on.get(f"/v1/charges/{stripe_refund['charge']}")
    body, header = signed(make_event("evt_dash_refund", "charge.refunded", charge))
    assert (
        cast.anonymous.post(
            "/api/v1/stripe/webhook",
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        ).status_code
        == 200
    )
    stripe_event_process(event_id="evt_dash_refund")
    # then: $5 unused credit and $15 owed as a receivable
    refund = Refund.objects.get(stripe_refund_id=stripe_refund["id"])
    assert (refund.credit_micros, refund.receivable_micros) == (5_000_000, 15_000_000)
    assert _balance(cast.buyer_a, Account.Kind.CREDIT) == 0
    assert _balance(cast.buyer_a, Account.Kind.RECEIVABLE) == 15_000_000
    assert _balance(None, Account.Kind.STRIPE_CLEARING) == 0
    _trial_balance_zero()


@pytest.mark.django_db
def test_a_saved_card_is_charged_directly_and_a_declined_one_says_why(cast, stripe_on):
    buyer = cast.client(cast.buyer_a, role="admin")
    saved = buyer.post(
        "/api/v1/billing/payment-methods", {"payment_method": "pm_card_visa"}, format="json"
    )
    assert saved.status_code == 200, saved.json()
    response = buyer.post(
        "/api/v1/billing/top-ups",
        {"amount": "50.00", "use_saved_method": True},
        format="json",
        HTTP_IDEMPOTENCY_KEY="saved-1",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["client_secret"] == ""
    intent = stripe_on.get(f"/v1/payment_intents/{response.json()['payment_intent_id']}")
    assert intent["status"] == "succeeded"
    assert intent["customer"] == services.customer_ensure(organization=cast.buyer_a).customer_id
    # credit still waits for the webhook
    assert _balance(cast.buyer_a, Account.Kind.CREDIT) == 0

    declined = cast.client(cast.buyer_b, role="admin")
    assert (
        declined.post(
            "/api/v1/billing/payment-methods",
            {"payment_method": "pm_card_chargeCustomerFail"},
            format="json",
        ).status_code
        == 200
    )
    refused = declined.post(
        "/api/v1/billing/top-ups",
        {"amount": "50.00", "use_saved_method": True},
        format="json",
        HTTP_IDEMPOTENCY_KEY="saved-2",
    )
    assert refused.status_code == 402, refused.json()
    assert TopUp.objects.get(organization=cast.buyer_b).status == TopUp.Status.FAILED


@pytest.mark.django_db
def test_top_up_amounts_are_checked_before_stripe_is_asked(cast, stripe_on, settings):
    buyer = cast.client(cast.buyer_a, role="admin")
    for amount, field in [("4.99", "amount"), ("10000.01", "amount"), ("10.001", "amount")]:
        response = buyer.post(
            "/api/v1/billing/top-ups",
            {"amount": amount},
            format="json",
            HTTP_IDEMPOTENCY_KEY=f"bad-{amount}",
        )
        assert response.status_code == 400, (amount, response.json())
        assert response.json()["error"]["details"]["field"] == field
    missing_key = buyer.post("/api/v1/billing/top-ups", {"amount": "10.00"}, format="json")
    assert missing_key.status_code == 400
    assert TopUp.objects.count() == 0


@pytest.mark.django_db
def test_without_stripe_the_endpoints_answer_503_and_call_nothing(cast, settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    buyer = cast.client(cast.buyer_a, role="admin")
    response = buyer.post(
        "/api/v1/billing/top-ups", {"amount": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert response.status_code == 503
    assert "STRIPE_SECRET_KEY" in response.json()["error"]["message"]
    hook = cast.anonymous.post("/api/v1/stripe/webhook", b"{}", content_type="application/json")
    assert hook.status_code == 503
    assert TopUp.objects.count() == 0


def _paid_top_up(org, localstripe, cents: int) -> TopUp:
    """A top-up paid on localstripe and credited through a signed webhook."""
    top_up = services.top_up_record(
        organization=org,
        amount_micros=cents * 10_000,
        currency="USD",
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key=f"paid-{uuid.uuid4().hex}",
    )
    services.top_up_submit(top_up=top_up)
    top_up.refresh_from_db()
    localstripe.post(
        f"/v1/payment_intents/{top_up.payment_intent_id}", payment_method="pm_card_visa"
    )
    intent = localstripe.post(f"/v1/payment_intents/{top_up.payment_intent_id}/confirm")
    assert intent["status"] == "succeeded"
    event_id = f"evt_paid_{top_up.pk}_{uuid.uuid4().hex[:6]}"
    from django.test import Client

    body, header = signed(make_event(event_id, "payment_intent.succeeded", intent))
    response = Client().post(
        "/api/v1/stripe/webhook",
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 200
    stripe_event_process(event_id=event_id)
    top_up.refresh_from_db()
    assert top_up.status == TopUp.Status.SUCCEEDED
    return top_up
