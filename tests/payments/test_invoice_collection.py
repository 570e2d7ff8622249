"""Invoice collection and dunning: a finalized invoice is charged to the buyer's saved
card off-session and marked paid once, by Stripe's webhook, however often and in
whatever order it arrives; a declining card goes past due, is retried on the
schedule, reminded of each time, and written off after the last retry; the ledger
balances throughout and the receivable is what the unpaid invoices owe; buyers see
their own attempts only, and only operator finance may retry one now."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import timedelta
from itertools import count

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from core.followers import followers_run_until_idle
from core.models import Event
from invoicing.drafts import invoice_draft_refresh
from invoicing.events import InvoicePaid
from invoicing.finalization import invoice_finalize
from invoicing.models import BillingProfile, Invoice
from invoicing.settlement import outstanding
from ledger import services as ledger
from ledger.models import Account, Balance
from payments import collection, services
from payments import events as pev
from payments.models import InvoiceCollection, InvoicePayment, StripeCustomer, StripeEvent
from payments.reconciliation import reconciliation_run
from payments.webhooks import stripe_event_process
from pricing.terms import billing_terms_set
from tests.payments.conftest import make_event, signed

_charges = count(1)


def _balance(org, kind: str) -> int:
    account = ledger.account_open(organization=org, kind=kind, currency="USD")
    b = Balance.objects.get(account=account)
    if account.normal_side == "C":
        return b.credits_posted - b.debits_posted
    return b.debits_posted - b.credits_posted


def _platform(kind: str) -> int:
    account = ledger.platform_account(kind=kind, currency="USD")
    b = Balance.objects.get(account=account)
    if account.normal_side == "C":
        return b.credits_posted - b.debits_posted
    return b.debits_posted - b.credits_posted


def _ledger_balances() -> None:
    debits = sum(b.debits_posted for b in Balance.objects.all())
    credits = sum(b.credits_posted for b in Balance.objects.all())
    assert debits == credits


def _receivable_is_what_invoices_owe(org) -> None:
    unpaid = Invoice.objects.filter(organization=org, status__in=collection.COLLECTIBLE)
    assert _balance(org, Account.Kind.RECEIVABLE) == sum(outstanding(i) for i in unpaid)


def _finalized_invoice(org, amount_micros: int, *, postpaid: bool = True) -> Invoice:
    """A month's invoice for ``amount_micros`` of charges posted to the buyer's
    receivable (postpaid) or prepaid credit, finalized now."""
    billing_terms_set(
        organization=org, postpaid=postpaid, on_credit_exhausted="pause", actor="test"
    )
    kind = Account.Kind.RECEIVABLE if postpaid else Account.Kind.CREDIT
    ledger.transfer_create(
        transfer_id=f"support-{next(_charges)}",
        debit_account_id=ledger.account_open(organization=org, kind=kind, currency="USD").pk,
        credit_account_id=ledger.platform_account(kind=Account.Kind.REVENUE, currency="USD").pk,
        amount_micros=amount_micros,
        currency="USD",
        kind="charge",
        description="Dedicated support",
    )
    now = timezone.now()
    draft = invoice_draft_refresh(organization=org, period=now.date().replace(day=1), now=now)
    assert draft is not None
    return invoice_finalize(invoice=draft, now=now, close_usage=False)


def _events(event_type: str, invoice: Invoice) -> list[dict]:
    return list(
        Event.objects.filter(stream_id=pev.invoice_collection_stream(invoice.pk), type=event_type)
        .order_by("position")
        .values_list("payload", flat=True)
    )


def _deliver(client, event: dict) -> None:
    body, header = signed(event)
    response = client.post(
        "/api/v1/stripe/webhook",
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 200, response.content


def _wait_for_event(event_type: str, object_id: str, deadline_s: float = 15) -> StripeEvent:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = StripeEvent.objects.filter(type=event_type, object_id=object_id).first()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {event_type} webhook for {object_id} arrived")


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.django_db(transaction=True)
def test_a_postpaid_invoice_is_charged_to_the_saved_card_and_paid_once(
    cast, stripe_on, live_server, seed
):
    # given: localstripe sends its webhooks here; a postpaid buyer with a saved card
    stripe_on.register_webhook(
        f"tandem-{uuid.uuid4().hex[:8]}",
        f"{live_server.url}/api/v1/stripe/webhook",
        "whsec_test_payments",
    )
    org = cast.buyer_a
    services.payment_method_save(organization=org, payment_method_id="pm_card_visa")
    invoice = _finalized_invoice(org, 123_450_000)
    assert invoice.status == Invoice.Status.OPEN and invoice.amount_due_micros == 123_450_000
    _receivable_is_what_invoices_owe(org)

    # when: the follower sees InvoiceFinalized (twice over: it is idempotent)
    followers_run_until_idle([collection.invoice_collection_follower])
    [payment] = InvoicePayment.objects.filter(invoice=invoice)
    assert (payment.attempt, payment.trigger, payment.status) == (1, "finalized", "pending")
    assert payment.amount_micros == 123_450_000
    assert payment.idempotency_key == f"tandem-invoice-{invoice.pk}-attempt-1"
    assert [e["attempt"] for e in _events(pev.INVOICE_PAYMENT_ATTEMPTED, invoice)] == [1]
    assert collection.invoice_collection_start(invoice=invoice) is None

    # and the actor sends it: an off-session PaymentIntent confirmed on the saved card
    sent = services.invoice_payment_submit(payment_id=payment.pk)
    assert sent.status == InvoicePayment.Status.PROCESSING
    intent = stripe_on.get(f"/v1/payment_intents/{sent.payment_intent_id}")
    assert intent["amount"] == 12345 and intent["currency"] == "usd"
    assert intent["metadata"]["tandem_invoice"] == str(invoice.pk)
    assert intent["metadata"]["tandem_invoice_payment"] == str(payment.pk)
    assert intent["customer"] == StripeCustomer.objects.get(organization=org).customer_id
    # sending again (a redelivered actor message) makes no second PaymentIntent
    assert services.invoice_payment_submit(payment_id=payment.pk).sends == 1
    # nothing is paid on the create call's word: the webhook decides
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN

    # then: Stripe's payment_intent.succeeded arrives; deliver it three times more, a
    # copy under another event id and a stale "processing" snapshot, in shuffled order
    arrived = _wait_for_event("payment_intent.succeeded", sent.payment_intent_id)
    succeeded = arrived.payload
    stale = make_event(
        f"evt_stale_{seed}",
        "payment_intent.processing",
        {**succeeded["data"]["object"], "status": "processing"},
        created=succeeded["created"] - 5,
    )
    copy = make_event(f"evt_copy_{seed}", "payment_intent.succeeded", succeeded["data"]["object"])
    deliveries = [succeeded, succeeded, succeeded, stale, copy]
    rng = random.Random(seed)
    rng.shuffle(deliveries)
    for event in deliveries:
        _deliver(cast.anonymous, event)
    ids = [arrived.event_id, stale["id"], copy["id"]]
    rng.shuffle(ids)
    for event_id in ids:
        stripe_event_process(event_id=event_id)
        _ledger_balances()
    # stored once per event id (localstripe may have sent it more than once itself)
    assert StripeEvent.objects.get(event_id=arrived.event_id).deliveries >= 4
    assert StripeEvent.objects.filter(event_id__in=ids).count() == 3

    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice.amount_paid_micros == 123_450_000
    assert invoice.payment_reference == sent.payment_intent_id
    paid = Event.objects.filter(stream_id=f"invoice:{invoice.key}", type=InvoicePaid.type)
    assert paid.count() == 1
    # no credit granted: the receivable is cleared against Stripe clearing, once
    assert _balance(org, Account.Kind.RECEIVABLE) == 0
    assert _balance(org, Account.Kind.CREDIT) == 0
    assert _platform(Account.Kind.STRIPE_CLEARING) == 123_450_000
    _receivable_is_what_invoices_owe(org)
    _ledger_balances()
    payment.refresh_from_db()
    assert payment.status == InvoicePayment.Status.SUCCEEDED
    assert (payment.received_micros, payment.excess_micros) == (123_450_000, 0)
    assert InvoiceCollection.objects.get(invoice=invoice).status == "paid"
    assert len(_events(pev.INVOICE_PAYMENT_SUCCEEDED, invoice)) == 1
    assert _events(pev.INVOICE_PAYMENT_REMINDER_SENT, invoice) == []
    # the day's reconciliation matches the ledger's entry with Stripe's charge
    assert payment.charge_id.startswith("ch_")
    run = reconciliation_run(day=timezone.now().date(), currency="USD")
    assert not run.differences.filter(source_id=payment.charge_id).exists()
    assert not [d for d in run.differences.all() if f"invoice:{invoice.key}:paid" in d.transfer_ids]

    # a dunning run much later finds nothing to do for it
    later = timezone.now() + timedelta(days=30)
    run = services.invoice_dunning_run(now=later)
    assert (run.started, run.resent, run.refreshed) == ([], [], [])


@pytest.mark.django_db
def test_a_declining_card_is_retried_on_schedule_then_written_off(cast, stripe_on):
    # given: a postpaid buyer whose saved card attaches but declines every charge
    org = cast.buyer_a
    services.payment_method_save(organization=org, payment_method_id="pm_card_chargeCustomerFail")
    invoice = _finalized_invoice(org, 80_000_000)
    followers_run_until_idle([collection.invoice_collection_follower])
    [first] = InvoicePayment.objects.filter(invoice=invoice)
    days = settings.DUNNING_RETRY_DAYS
    assert days == [1, 3, 5, 7]

    # when: the first charge is declined on confirmation
    t0 = timezone.now()
    declined = services.invoice_payment_submit(payment_id=first.pk, now=t0)

    # then: the invoice is past due, a reminder names the first retry
    assert declined.status == InvoicePayment.Status.FAILED
    assert declined.failure_code == "card_declined"
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAST_DUE
    state = InvoiceCollection.objects.get(invoice=invoice)
    assert state.status == "retry_scheduled" and state.next_retry_at == t0 + timedelta(days=1)
    [reminder] = _events(pev.INVOICE_PAYMENT_REMINDER_SENT, invoice)
    assert reminder["attempt"] == 1 and reminder["final"] is False
    assert reminder["next_retry_at"] == (t0 + timedelta(days=1)).isoformat()
    assert reminder["amount_due_micros"] == 80_000_000
    _receivable_is_what_invoices_owe(org)
    _ledger_balances()

    # nothing is due before the first retry's time
    early = services.invoice_dunning_run(now=t0 + timedelta(hours=23))
    assert early.started == [] and InvoicePayment.objects.filter(invoice=invoice).count() == 1

    # each retry on its day: one attempt, declined, reminded of the next
    for n, day in enumerate(days):
        at = t0 + timedelta(days=day)
        run = services.invoice_dunning_run(now=at)
        assert len(run.started) == 1, (day, run)
        again = services.invoice_dunning_run(now=at)  # a second run claims nothing
        assert again.started == []
        attempt = InvoicePayment.objects.get(pk=run.started[0])
        assert (attempt.attempt, attempt.trigger, attempt.status) == (n + 2, "scheduled", "failed")
        reminders = _events(pev.INVOICE_PAYMENT_REMINDER_SENT, invoice)
        assert len(reminders) == n + 2
        last = n == len(days) - 1
        expected_next = None if last else (t0 + timedelta(days=days[n + 1])).isoformat()
        assert (reminders[-1]["attempt"], reminders[-1]["next_retry_at"]) == (n + 2, expected_next)
        assert reminders[-1]["final"] is last
        invoice.refresh_from_db()
        assert invoice.status == ("uncollectible" if last else "past_due")
        _receivable_is_what_invoices_owe(org)
        _ledger_balances()

    # then: written off after the last retry; the ledger says so
    state.refresh_from_db()
    assert state.status == "uncollectible" and state.next_retry_at is None
    assert (state.attempts, state.retries_done) == (5, 4)
    assert invoice.written_off_micros == 80_000_000
    assert _balance(org, Account.Kind.RECEIVABLE) == 0
    assert _platform(Account.Kind.ADJUSTMENTS) == 80_000_000  # the write-off, as bad debt
    assert len(_events(pev.INVOICE_PAYMENT_ATTEMPTED, invoice)) == 5
    assert len(_events(pev.INVOICE_PAYMENT_FAILED, invoice)) == 5
    # each attempt was its own PaymentIntent at Stripe, and nothing more is tried
    intents = stripe_on.get("/v1/payment_intents", limit=100)["data"]
    ours = [i for i in intents if i["metadata"].get("tandem_invoice") == str(invoice.pk)]
    assert sorted(int(i["metadata"]["tandem_attempt"]) for i in ours) == [1, 2, 3, 4, 5]
    assert all(i["status"] == "requires_payment_method" for i in ours)
    final = services.invoice_dunning_run(now=t0 + timedelta(days=60))
    assert final.started == [] and InvoicePayment.objects.filter(invoice=invoice).count() == 5


@pytest.mark.django_db
def test_a_failure_reported_by_webhook_moves_the_dunning_once(cast, webhook_secret, settings):
    # given: an attempt Stripe accepted, and whose charge failed later (the webhook)
    settings.STRIPE_SECRET_KEY = "sk_test_payments"  # configured; never called here
    org = cast.buyer_b
    StripeCustomer.objects.create(
        organization=org, customer_id="cus_b", default_payment_method="pm_card_visa"
    )
    invoice = _finalized_invoice(org, 15_000_000)
    followers_run_until_idle([collection.invoice_collection_follower])
    [payment] = InvoicePayment.objects.filter(invoice=invoice)
    InvoicePayment.objects.filter(pk=payment.pk).update(
        status="processing", payment_intent_id="pi_async_1"
    )
    intent = {
        "id": "pi_async_1",
        "object": "payment_intent",
        "amount": 1500,
        "currency": "usd",
        "status": "requires_payment_method",
        "metadata": {"tandem_invoice_payment": str(payment.pk)},
        "last_payment_error": {"code": "card_declined", "message": "Insufficient funds."},
    }
    failed = make_event("evt_fail_1", "payment_intent.payment_failed", intent)
    processing = make_event(
        "evt_proc_1", "payment_intent.processing", {**intent, "status": "processing"}
    )
    # when: the failure arrives twice and a stale "processing" after it
    for event in (failed, failed, processing):
        _deliver(cast.anonymous, event)
    for event_id in ("evt_fail_1", "evt_proc_1", "evt_fail_1"):
        stripe_event_process(event_id=event_id)
    # then: one failure, one reminder, the invoice past due with a retry tomorrow
    payment.refresh_from_db()
    assert payment.status == "failed" and payment.failure_message == "Insufficient funds."
    assert len(_events(pev.INVOICE_PAYMENT_FAILED, invoice)) == 1
    [reminder] = _events(pev.INVOICE_PAYMENT_REMINDER_SENT, invoice)
    assert reminder["next_retry_at"] is not None
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAST_DUE
    assert InvoiceCollection.objects.get(invoice=invoice).status == "retry_scheduled"
    _receivable_is_what_invoices_owe(org)
    # and a top-up's PaymentIntent still goes to the top-ups
    assert not services.is_invoice_payment({"id": "pi_other", "metadata": {"tandem_top_up": "1"}})


@pytest.mark.django_db
def test_prepaid_invoices_owing_nothing_are_not_collected_and_no_card_means_no_charge(
    cast, settings
):
    # without Stripe configured (the embedded default) nothing is ever charged
    settings.STRIPE_SECRET_KEY = ""
    StripeCustomer.objects.create(
        organization=cast.operator, customer_id="cus_o", default_payment_method="pm_card_visa"
    )
    unconfigured = _finalized_invoice(cast.operator, 7_000_000)
    followers_run_until_idle([collection.invoice_collection_follower])
    [skipped] = _events(pev.INVOICE_COLLECTION_SKIPPED, unconfigured)
    assert skipped["reason"] == "payments are not configured"
    settings.STRIPE_SECRET_KEY = "sk_test_payments"  # configured; never called here

    # a prepaid buyer whose credit paid the month: finalized paid, nothing to collect
    prepaid = cast.buyer_a
    ledger.credits_grant(
        organization=prepaid,
        amount_micros=50_000_000,
        currency="USD",
        reason="t",
        transfer_id="grant-prepaid",
    )
    StripeCustomer.objects.create(
        organization=prepaid, customer_id="cus_p", default_payment_method="pm_card_visa"
    )
    paid = _finalized_invoice(prepaid, 20_000_000, postpaid=False)
    assert paid.status == Invoice.Status.PAID and paid.amount_due_micros == 0
    # a postpaid buyer without a saved method: skipped, told, left open (not dunned)
    no_card = _finalized_invoice(cast.buyer_b, 9_000_000)
    followers_run_until_idle([collection.invoice_collection_follower])
    assert not InvoicePayment.objects.exists() and not InvoiceCollection.objects.exists()
    [skipped] = _events(pev.INVOICE_COLLECTION_SKIPPED, no_card)
    assert skipped["reason"] == "no saved payment method"
    assert _events(pev.INVOICE_COLLECTION_SKIPPED, paid) == []
    no_card.refresh_from_db()
    assert no_card.status == Invoice.Status.OPEN
    _receivable_is_what_invoices_owe(cast.buyer_b)


@pytest.mark.django_db
def test_buyers_see_their_own_attempts_and_only_finance_retries(cast, stripe_on):
    # given: buyer A's invoice, whose first attempt declined
    org = cast.buyer_a
    services.payment_method_save(organization=org, payment_method_id="pm_card_chargeCustomerFail")
    invoice = _finalized_invoice(org, 42_000_000)
    followers_run_until_idle([collection.invoice_collection_follower])
    [first] = InvoicePayment.objects.filter(invoice=invoice)
    services.invoice_payment_submit(payment_id=first.pk)

    # buyer A's members see the attempt and the dunning state
    member = cast.client(org, role="member")
    mine = member.get(f"/api/v1/billing/invoice-payments?invoice={invoice.pk}")
    assert mine.status_code == 200, mine.json()
    [row] = mine.json()["results"]
    assert (row["attempt"], row["status"], row["amount"]) == (1, "failed", "42.00")
    assert row["failure_code"] == "card_declined"
    state = member.get(f"/api/v1/billing/invoice-collections/{invoice.pk}").json()
    assert state["invoice_status"] == "past_due" and state["amount_due"] == "42.00"
    assert state["collection"]["status"] == "retry_scheduled"
    assert state["collection"]["next_retry_at"] is not None

    # buyer B sees none of it
    other = cast.client(cast.buyer_b, role="admin")
    assert other.get(f"/api/v1/billing/invoice-payments?invoice={invoice.pk}").status_code == 404
    assert other.get("/api/v1/billing/invoice-payments").json()["results"] == []
    assert other.get(f"/api/v1/billing/invoice-collections/{invoice.pk}").status_code == 404
    assert cast.anonymous.get("/api/v1/billing/invoice-payments").status_code == 401
    assert member.get("/api/v1/billing/invoice-payments?invoice=x").status_code == 400

    # only operator finance may retry now: not the buyer's admin or finance, not B
    retry = "/api/v1/billing/invoice-payments/retry"
    which = {"invoice": invoice.pk}
    for caller in (cast.client(org, role="admin"), cast.client(org, role="finance"), other):
        assert caller.post(retry, which, HTTP_IDEMPOTENCY_KEY="r-0").status_code == 403
    assert cast.anonymous.post(retry, which, HTTP_IDEMPOTENCY_KEY="r-0").status_code == 401
    assert cast.finance.post(retry, which).status_code == 400  # Idempotency-Key required
    missing = cast.finance.post(retry, {"invoice": invoice.pk + 1000}, HTTP_IDEMPOTENCY_KEY="r-9")
    assert missing.status_code == 404
    assert InvoicePayment.objects.filter(invoice=invoice).count() == 1

    # finance saves a working card for the buyer and retries: charged now, once
    services.payment_method_save(organization=org, payment_method_id="pm_card_visa")
    forced = cast.finance.post(retry, which, HTTP_IDEMPOTENCY_KEY="r-1")
    assert forced.status_code == 201, forced.json()
    body = forced.json()
    assert (body["attempt"], body["trigger"], body["status"]) == (2, "manual", "processing")
    again = cast.finance.post(retry, which, HTTP_IDEMPOTENCY_KEY="r-1")
    assert again.status_code == 201 and again.json()["id"] == body["id"]
    busy = cast.finance.post(retry, which, HTTP_IDEMPOTENCY_KEY="r-2")
    assert busy.status_code == 409  # one attempt in flight per invoice
    assert InvoicePayment.objects.filter(invoice=invoice).count() == 2
    # finance sees every org's attempts
    assert len(cast.finance.get("/api/v1/billing/invoice-payments").json()["results"]) == 2
    # the scheduled retry still stands for when this one fails
    assert InvoiceCollection.objects.get(invoice=invoice).next_retry_at is not None

    # when the forced charge succeeds (Stripe re-read: the webhook is late), it is paid
    run = services.invoice_dunning_run(now=timezone.now() + timedelta(hours=2))
    assert run.refreshed == [body["id"]]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    paid_again = cast.finance.post(retry, which, HTTP_IDEMPOTENCY_KEY="r-3")
    assert paid_again.status_code == 409
    _receivable_is_what_invoices_owe(org)
    _ledger_balances()


@pytest.mark.django_db
def test_refunding_an_invoice_payment_issues_a_credit_note_and_returns_its_total(cast, stripe_on):
    # given: buyer B (19% tax) paid a $119.00 invoice by its saved card
    org = cast.buyer_b
    BillingProfile.objects.create(organization=org, tax_rate_bps=1900, legal_name="Buyer B GmbH")
    services.payment_method_save(organization=org, payment_method_id="pm_card_visa")
    invoice = _finalized_invoice(org, 100_000_000)
    assert invoice.amount_due_micros == 119_000_000
    followers_run_until_idle([collection.invoice_collection_follower])
    [payment] = InvoicePayment.objects.filter(invoice=invoice)
    payment = services.invoice_payment_submit(payment_id=payment.pk)
    intent = stripe_on.get(f"/v1/payment_intents/{payment.payment_intent_id}")
    _deliver(cast.anonymous, make_event("evt_inv_paid", "payment_intent.succeeded", intent))
    stripe_event_process(event_id="evt_inv_paid")
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    revenue, tax = _platform(Account.Kind.REVENUE), _platform(Account.Kind.TAX_PAYABLE)

    # when: finance refunds $10.00 of it (before tax)
    path = f"/api/v1/billing/invoice-payments/{payment.pk}/refunds"
    body = {"amount": "10.00", "reason": "GPU outage on the 3rd"}
    assert (
        cast.client(org, role="admin").post(path, body, HTTP_IDEMPOTENCY_KEY="x").status_code == 403
    )
    response = cast.finance.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY="rf-1")
    assert response.status_code == 201, response.json()
    refund = response.json()
    assert (refund["amount"], refund["status"]) == ("11.90", "succeeded")
    assert refund["credit_note"].startswith("TDM-CN-")
    again = cast.finance.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY="rf-1")
    assert again.json()["id"] == refund["id"]

    # then: a credit note corrects revenue and tax, and Stripe returned its total
    stripe_refunds = stripe_on.get("/v1/refunds", payment_intent=payment.payment_intent_id)["data"]
    assert [r["amount"] for r in stripe_refunds] == [1190]
    invoice.refresh_from_db()
    assert invoice.credited_micros == 11_900_000 and invoice.status == Invoice.Status.PAID
    assert _platform(Account.Kind.REVENUE) == revenue - 10_000_000
    assert _platform(Account.Kind.TAX_PAYABLE) == tax - 1_900_000
    assert _platform(Account.Kind.STRIPE_CLEARING) == 119_000_000 - 11_900_000
    assert _balance(org, Account.Kind.CREDIT) == 0  # given by the note, returned to the card
    _receivable_is_what_invoices_owe(org)
    _ledger_balances()
    [note_event] = _events(pev.INVOICE_PAYMENT_REFUNDED, invoice)
    assert note_event["credit_note"] == refund["credit_note"]

    # Stripe's own report of that refund changes nothing more
    charge = stripe_on.get(f"/v1/charges/{payment.charge_id or stripe_refunds[0]['charge']}")
    _deliver(cast.anonymous, make_event("evt_inv_refunded_1", "charge.refunded", charge))
    stripe_event_process(event_id="evt_inv_refunded_1")
    assert _platform(Account.Kind.STRIPE_CLEARING) == 107_100_000
    # more than the invoice's subtotal left cannot be credited or refunded
    too_much = cast.finance.post(
        path, {"amount": "90.01", "reason": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="rf-2"
    )
    assert too_much.status_code == 400, too_much.json()
    assert invoice.credit_notes.count() == 1

    # a refund made in Stripe's dashboard: no credit note, so the buyer owes it again
    made = stripe_on.post("/v1/refunds", payment_intent=payment.payment_intent_id, amount=500)
    charge = stripe_on.get(f"/v1/charges/{made['charge']}")
    _deliver(cast.anonymous, make_event("evt_inv_refunded_2", "charge.refunded", charge))
    stripe_event_process(event_id="evt_inv_refunded_2")
    assert _platform(Account.Kind.STRIPE_CLEARING) == 107_100_000 - 5_000_000
    assert _balance(org, Account.Kind.RECEIVABLE) == 5_000_000
    _ledger_balances()
    day = reconciliation_run(day=timezone.now().date(), currency="USD")
    assert not day.differences.filter(source_id__in=[made["id"], refund["stripe_refund_id"]])

    # the buyer reads the payment and both refunds; another buyer cannot
    detail = cast.client(org, role="member").get(f"/api/v1/billing/invoice-payments/{payment.pk}")
    assert [(r["origin"], r["amount"]) for r in detail.json()["refunds"]] == [
        ("tandem", "11.90"),
        ("stripe", "5.00"),
    ]
    other = cast.client(cast.buyer_a, role="admin")
    assert other.get(f"/api/v1/billing/invoice-payments/{payment.pk}").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_two_dunning_runs_at_once_start_each_due_retry_once(cast, stripe_on):
    # given: two buyers' invoices, each declined once and due for its first retry
    invoices = []
    for org in (cast.buyer_a, cast.buyer_b):
        services.payment_method_save(
            organization=org, payment_method_id="pm_card_chargeCustomerFail"
        )
        invoices.append(_finalized_invoice(org, 30_000_000))
    followers_run_until_idle([collection.invoice_collection_follower])
    t0 = timezone.now()
    for payment in InvoicePayment.objects.order_by("pk"):
        assert services.invoice_payment_submit(payment_id=payment.pk, now=t0).status == "failed"

    # when: two runners run the dunning at the same moment, in their own connections
    barrier = threading.Barrier(2)
    started: list[list[int]] = []

    def runner() -> None:
        try:
            barrier.wait(timeout=10)
            run = services.invoice_dunning_run(now=t0 + timedelta(days=1))
            started.append(run.started)
        finally:
            connection.close()

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # then: each invoice got exactly one retry, from one runner or the other
    assert sorted(len(s) for s in started) in ([0, 2], [1, 1])
    for invoice in invoices:
        attempts = InvoicePayment.objects.filter(invoice=invoice).order_by("attempt")
        assert [(p.attempt, p.trigger) for p in attempts] == [(1, "finalized"), (2, "scheduled")]
        assert len(_events(pev.INVOICE_PAYMENT_REMINDER_SENT, invoice)) == 2
        state = InvoiceCollection.objects.get(invoice=invoice)
        assert (state.retries_done, state.next_retry_at) == (1, t0 + timedelta(days=3))
    _ledger_balances()


@pytest.mark.django_db
def test_an_amount_due_to_the_micro_unit_is_charged_to_the_cent_above(cast, stripe_on):
    # given: prepaid credit paid $3.123456 of a $10.00 invoice, $6.876544 left owed
    org = cast.buyer_a
    ledger.credits_grant(
        organization=org, amount_micros=3_123_456, currency="USD", reason="t", transfer_id="g-odd"
    )
    services.payment_method_save(organization=org, payment_method_id="pm_card_visa")
    invoice = _finalized_invoice(org, 10_000_000)
    assert invoice.amount_due_micros == 6_876_544
    followers_run_until_idle([collection.invoice_collection_follower])
    [payment] = InvoicePayment.objects.filter(invoice=invoice)

    # when: it is charged and Stripe confirms
    payment = services.invoice_payment_submit(payment_id=payment.pk)
    intent = stripe_on.get(f"/v1/payment_intents/{payment.payment_intent_id}")
    assert intent["amount"] == 688
    _deliver(cast.anonymous, make_event("evt_odd_paid", "payment_intent.succeeded", intent))
    stripe_event_process(event_id="evt_odd_paid")

    # then: the invoice is paid; the fraction of a cent above it is the buyer's credit
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    payment.refresh_from_db()
    assert (payment.received_micros, payment.excess_micros) == (6_880_000, 3_456)
    assert _balance(org, Account.Kind.CREDIT) == 3_456
    assert _balance(org, Account.Kind.RECEIVABLE) == 0
    _ledger_balances()
