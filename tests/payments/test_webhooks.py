"""Webhook security and convergence.

- 1,000 tampered deliveries (flipped bytes, wrong secret, missing or mangled header,
  timestamps outside the 300 s tolerance, replays of old signed events): every one
  is a 400 and nothing is stored or posted.
- 1,000 genuine events, shuffled and each delivered 1 to 3 times, end in the same
  ledger as one in-order delivery of the same events.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

import pytest
from django.test import Client

from core import services as core_services
from core.models import Event
from ledger.models import Account, Balance, Posting
from payments import services
from payments.models import Dispute, Refund, StripeEvent, TopUp
from payments.webhooks import stripe_event_process, stripe_events_process_pending
from tests.payments.conftest import WEBHOOK_SECRET, make_event, signed

URL = "/api/v1/stripe/webhook"


def _post(client: Client, body: bytes, header: str | None):
    extra = {} if header is None else {"HTTP_STRIPE_SIGNATURE": header}
    return client.post(URL, body, content_type="application/json", **extra)


def _ledger_fingerprint() -> tuple[int, int, int]:
    return (Event.objects.count(), Posting.objects.count(), StripeEvent.objects.count())


@pytest.mark.django_db
def test_a_thousand_tampered_deliveries_are_all_refused_with_no_side_effect(cast, webhook_secret):
    rng = random.Random(9)
    client = Client()
    org = cast.buyer_a
    top_up = TopUp.objects.create(
        organization=org,
        amount_micros=10_000_000,
        currency="USD",
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key="t",
        payment_intent_id="pi_target",
    )
    intent = {
        "id": "pi_target",
        "object": "payment_intent",
        "amount": 1000,
        "amount_received": 1000,
        "currency": "usd",
        "status": "succeeded",
        "metadata": {"tandem_top_up": str(top_up.pk)},
    }
    before = _ledger_fingerprint()
    now = int(time.time())
    kinds: Counter[str] = Counter()
    for index in range(1000):
        event = make_event(f"evt_forged_{index}", "payment_intent.succeeded", intent)
        body, header = signed(event)
        kind = ("flip", "secret", "missing", "mangled", "stale", "future", "replay")[index % 7]
        kinds[kind] += 1
        if kind == "flip":
            position = rng.randrange(len(body))
            body = (
                body[:position]
                + bytes([body[position] ^ (1 << rng.randrange(8))])
                + body[position + 1 :]
            )
        elif kind == "secret":
            body, header = signed(event, secret=f"whsec_wrong_{index}")
        elif kind == "missing":
            header = None
        elif kind == "mangled":
            header = rng.choice(
                ["", "t=", "v1=abc", f"t={now}", "t=x,v1=y", header.replace("v1=", "v0="), "💥"]
            )
        elif kind == "stale":
            body, header = signed(event, at=now - 301 - rng.randrange(100_000))
        elif kind == "future":
            body, header = signed(event, at=now + 301 + rng.randrange(100_000))
        else:  # a genuine delivery captured long ago, sent again now
            old = now - 3600 * (1 + rng.randrange(48))
            body, header = signed(make_event(f"evt_old_{index}", event["type"], intent), at=old)
        response = _post(client, body, header)
        assert response.status_code == 400, (kind, response.content)
        assert response.json()["error"]["code"] in ("invalid_signature", "invalid")
    assert _ledger_fingerprint() == before
    assert TopUp.objects.get(pk=top_up.pk).status == TopUp.Status.PENDING
    assert all(kinds[k] > 100 for k in kinds)

    # and the genuine one goes through
    body, header = signed(make_event("evt_real", "payment_intent.succeeded", intent))
    assert _post(client, body, header).status_code == 200
    stripe_event_process(event_id="evt_real")
    assert TopUp.objects.get(pk=top_up.pk).status == TopUp.Status.SUCCEEDED


@pytest.mark.django_db
def test_a_signed_body_that_is_not_an_event_is_a_400_not_a_500(cast, webhook_secret):
    for body in [b"[]", b"not json", json.dumps({"id": "evt_1"}).encode(), b"\xff\xfe"]:
        header = _sign_raw(body)
        response = _post(Client(), body, header)
        assert response.status_code == 400, body
    assert StripeEvent.objects.count() == 0


def _sign_raw(body: bytes) -> str:
    import stripe

    text = body.decode("utf-8", errors="replace")
    return stripe.WebhookSignature.generate_signature_header(text, WEBHOOK_SECRET)


# --- convergence ---------------------------------------------------------------------


def _scenario(prefix: str, orgs: list[Any], rng: random.Random) -> list[dict[str, Any]]:
    """Genuine events for top-ups of ``orgs``: payments (some failing first), refunds
    made in Stripe (several per charge, each charge.refunded listing all so far),
    disputes opened and closed won or lost. 500 events per call."""
    events: list[dict[str, Any]] = []
    serial = 0

    def add(event_type: str, obj: dict[str, Any]) -> None:
        nonlocal serial
        serial += 1
        events.append(make_event(f"evt_{prefix}_{serial}", event_type, obj, created=serial))

    index = 0
    while len(events) < 500:
        org = orgs[index % len(orgs)]
        index += 1
        cents = rng.randrange(500, 20_000)
        top_up = services.top_up_record(
            organization=org,
            amount_micros=cents * 10_000,
            currency="USD",
            source=TopUp.Source.PAYMENT_ELEMENT,
            request_key=f"{prefix}-{index}",
        )
        intent_id = f"pi_{prefix}_{index}"
        charge_id = f"ch_{prefix}_{index}"
        # as the top-up API does when Stripe answers
        services.top_up_mark(
            top_up_id=top_up.pk, status=TopUp.Status.REQUIRES_PAYMENT, payment_intent_id=intent_id
        )
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": cents,
            "currency": "usd",
            "latest_charge": charge_id,
            "metadata": {"tandem_top_up": str(top_up.pk)},
        }
        if rng.random() < 0.3:
            add(
                "payment_intent.payment_failed",
                {
                    **intent,
                    "status": "requires_payment_method",
                    "last_payment_error": {"message": "Your card was declined."},
                },
            )
        add("payment_intent.succeeded", {**intent, "status": "succeeded", "amount_received": cents})
        roll = rng.random()
        if roll < 0.4:
            refunds: list[dict[str, Any]] = []
            left = cents
            for n in range(rng.randrange(1, 4)):
                amount = rng.randrange(1, max(2, left // 2))
                left -= amount
                refunds.append(
                    {
                        "id": f"re_{prefix}_{index}_{n}",
                        "object": "refund",
                        "amount": amount,
                        "charge": charge_id,
                        "payment_intent": intent_id,
                        "status": "succeeded",
                        "metadata": {},
                    }
                )
                add(
                    "charge.refunded",
                    {
                        "id": charge_id,
                        "object": "charge",
                        "payment_intent": intent_id,
                        "amount": cents,
                        "amount_refunded": cents - left,
                        "refunds": {"object": "list", "data": list(refunds), "has_more": False},
                        "metadata": {},
                    },
                )
        elif roll < 0.7:
            dispute = {
                "id": f"dp_{prefix}_{index}",
                "object": "dispute",
                "amount": cents,
                "currency": "usd",
                "charge": charge_id,
                "payment_intent": intent_id,
                "reason": "fraudulent",
            }
            add("charge.dispute.created", {**dispute, "status": "needs_response"})
            outcome = rng.choice(["won", "lost"])
            add("charge.dispute.closed", {**dispute, "status": outcome})
    return events[:500]


def _deliver(client: Client, events: list[dict[str, Any]]) -> None:
    for event in events:
        body, header = signed(event)
        response = _post(client, body, header)
        assert response.status_code == 200, response.content


def _state(orgs: list[Any]) -> list[tuple]:
    out = []
    for org in orgs:
        accounts = {a.kind: a for a in Account.objects.filter(organization=org)}
        balances = {
            kind: (b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending)
            for kind, a in sorted(accounts.items())
            for b in [Balance.objects.get(account=a)]
        }
        top_ups = sorted(
            (t.amount_micros, t.status, t.credited_micros)
            for t in TopUp.objects.filter(organization=org)
        )
        refunds = sorted(
            (r.amount_micros, r.credit_micros, r.receivable_micros)
            for r in Refund.objects.filter(top_up__organization=org)
        )
        disputes = sorted(
            (d.amount_micros, d.status, d.withdrawn, d.reinstated, d.credit_micros)
            for d in Dispute.objects.filter(top_up__organization=org)
        )
        out.append((balances, top_ups, refunds, disputes))
    return out


@pytest.mark.django_db
def test_a_thousand_genuine_events_shuffled_and_repeated_end_in_the_in_order_ledger(
    cast, webhook_secret
):
    # given: two identical sets of buyers, each with 500 events of the same story
    seed = 1234
    in_order_orgs = [core_services.org_create(name=f"ordered {i}", kind="buyer") for i in range(8)]
    shuffled_orgs = [core_services.org_create(name=f"shuffled {i}", kind="buyer") for i in range(8)]
    ordered = _scenario("o", in_order_orgs, random.Random(seed))
    scrambled = _scenario("s", shuffled_orgs, random.Random(seed))
    assert len(ordered) + len(scrambled) == 1000
    client = Client()

    # when: one set is delivered once each, in order, processed as it arrives
    _deliver(client, ordered)
    assert stripe_events_process_pending() == (500, 0)

    # and the other shuffled, every event 1 to 3 times, processed in arrival order
    rng = random.Random(seed + 1)
    deliveries = [e for e in scrambled for _ in range(rng.randrange(1, 4))]
    rng.shuffle(deliveries)
    for position, event in enumerate(deliveries):
        _deliver(client, [event])
        if rng.random() < 0.05 or position == len(deliveries) - 1:
            stripe_events_process_pending()
    # events about a payment not yet applied wait for it; a sweep or two finishes them
    for _ in range(5):
        if stripe_events_process_pending() == (0, 0):
            break
    assert StripeEvent.objects.filter(processed_at__isnull=True).count() == 0
    assert StripeEvent.objects.filter(event_id__startswith="evt_s_").count() == 500

    # then: the same balances, top-ups, refunds and disputes, buyer for buyer
    assert _state(shuffled_orgs) == _state(in_order_orgs)
    # and the books balance, with something actually clawed back and reinstated
    totals = Balance.objects.all()
    assert sum(b.debits_posted for b in totals) == sum(b.credits_posted for b in totals)
    assert Refund.objects.count() > 20
    assert Dispute.objects.filter(reinstated=True).exists()
    assert Dispute.objects.filter(status="lost", withdrawn=True).exists()
