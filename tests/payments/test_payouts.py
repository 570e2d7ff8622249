"""Connect onboarding and payouts, through the stripe library against a server that
answers with Stripe's published example objects and records each request."""

from __future__ import annotations

import pytest

from core import services as core_services
from ledger import services as ledger
from ledger.models import Account, Balance
from payments import services
from payments.models import ConnectedAccount, Payout, StripeEvent
from payments.reconciliation import reconciliation_run
from payments.webhooks import stripe_event_process
from tests.payments.conftest import make_event, signed


def _earn(provider, micros: int, transfer_id: str) -> None:
    """The provider earns ``micros`` on its payable (from a buyer's usage)."""
    buyer = core_services.org_create(name=f"buyer of {transfer_id}", kind="buyer")
    ledger.credits_grant(
        organization=buyer,
        amount_micros=micros,
        currency="USD",
        reason="t",
        transfer_id=f"g-{transfer_id}",
    )
    credit = ledger.account_open(organization=buyer, kind=Account.Kind.CREDIT, currency="USD")
    payable = ledger.account_open(organization=provider, kind=Account.Kind.PAYABLE, currency="USD")
    ledger.transfer_create(
        transfer_id=transfer_id,
        debit_account_id=credit.pk,
        credit_account_id=payable.pk,
        amount_micros=micros,
        currency="USD",
        kind="usage",
        description=f"lease GPU time {transfer_id}",
    )


def _payable(provider) -> Balance:
    account = ledger.account_open(organization=provider, kind=Account.Kind.PAYABLE, currency="USD")
    return Balance.objects.get(account=account)


def _onboarded(provider, fake) -> ConnectedAccount:
    account = services.connected_account_create(organization=provider)
    fake.accounts[account.account_id].update(
        details_submitted=True, charges_enabled=True, payouts_enabled=True
    )
    body, header = signed(
        make_event(f"evt_acct_{account.pk}", "account.updated", {"id": account.account_id})
    )
    from django.test import Client

    response = Client().post(
        "/api/v1/stripe/webhook",
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 200
    stripe_event_process(event_id=f"evt_acct_{account.pk}")
    account.refresh_from_db()
    return account


@pytest.mark.django_db
def test_onboarding_creates_an_express_account_and_a_link_and_reads_status_from_stripe(
    cast, fake_stripe
):
    admin = cast.client(cast.provider_a, role="admin")
    created = admin.post("/api/v1/payouts/account", {"country": "de"}, format="json")
    assert created.status_code == 201, created.json()
    account_id = created.json()["account_id"]
    assert created.json()["status"] == "onboarding"
    [request] = fake_stripe.made("POST", "/v1/accounts")
    assert request.params["type"] == "express"
    assert request.params["country"] == "DE"
    assert request.params["capabilities[transfers][requested]"] == "true"
    assert request.params["metadata[tandem_organization]"] == str(cast.provider_a.pk)
    assert request.idempotency_key == f"tandem-connect-{cast.provider_a.pk}"
    # asking again makes no second account
    assert (
        admin.post("/api/v1/payouts/account", {}, format="json").json()["account_id"] == account_id
    )
    assert len(fake_stripe.made("POST", "/v1/accounts")) == 1

    link = admin.post(
        "/api/v1/payouts/account/link",
        {"refresh_url": "https://tandem.test/refresh", "return_url": "https://tandem.test/done"},
        format="json",
    )
    assert link.status_code == 200, link.json()
    assert link.json()["url"].startswith(f"https://connect.stripe.test/setup/{account_id}/")
    [request] = fake_stripe.made("POST", "/v1/account_links")
    assert request.params == {
        "account": account_id,
        "refresh_url": "https://tandem.test/refresh",
        "return_url": "https://tandem.test/done",
        "type": "account_onboarding",
    }

    # a stale account.updated (the event says "disabled") cannot undo what Stripe
    # says now: the status is re-fetched
    fake_stripe.accounts[account_id].update(details_submitted=True, payouts_enabled=True)
    body, header = signed(
        make_event(
            "evt_acct_stale",
            "account.updated",
            {"id": account_id, "payouts_enabled": False, "details_submitted": False},
            created=1,
        )
    )
    assert (
        cast.anonymous.post(
            "/api/v1/stripe/webhook",
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        ).status_code
        == 200
    )
    stripe_event_process(event_id="evt_acct_stale")
    assert fake_stripe.made("GET", f"/v1/accounts/{account_id}")
    status = admin.get("/api/v1/payouts/account").json()
    assert status["status"] == "active"
    assert status["payouts_enabled"] is True

    # buyers and members cannot onboard
    assert (
        cast.client(cast.buyer_a, role="admin").post("/api/v1/payouts/account", {}).status_code
        == 403
    )
    assert (
        cast.client(cast.provider_b, role="member").post("/api/v1/payouts/account", {}).status_code
        == 403
    )


class Killed(BaseException):
    """The process died here: no cleanup, no except clause catches it."""


def _providers(fake, count: int = 3) -> list:
    providers = []
    for index in range(count):
        org = core_services.org_create(name=f"provider {index}", kind="provider")
        _earn(org, 30_000_000 + index * 1_234_567, f"earn-{index}")
        _onboarded(org, fake)
        providers.append(org)
    return providers


@pytest.mark.django_db
# A clean run passes 12 checkpoints: planned, submitting, accepted, recorded for
# each of three providers (the last test below checks that count).
@pytest.mark.parametrize("kill_at", range(1, 13))
def test_a_payout_run_killed_at_any_step_and_rerun_pays_each_provider_exactly_once(
    cast, fake_stripe, kill_at
):
    # given: three onboarded providers owed $30.00, $31.23 and $32.47 (+ sub-cent dust)
    providers = _providers(fake_stripe)
    seen: list[tuple[str, int]] = []

    def die_at_step(step: str, payout: Payout) -> None:
        seen.append((step, payout.pk))
        if len(seen) == kill_at:
            raise Killed(step)

    # when: the run is killed at step ``kill_at`` and run again, twice
    with pytest.raises(Killed):
        services.payouts_run(checkpoint=die_at_step)
    services.payouts_run()
    services.payouts_run()

    assert len(seen) == kill_at
    # then: one transfer per provider, each for its whole cents, each recorded once
    transfers = list(fake_stripe.transfers.values())
    assert len(transfers) == 3
    for org in providers:
        [payout] = Payout.objects.filter(organization=org)
        assert payout.status == Payout.Status.PAID
        [transfer] = [t for t in transfers if t["metadata"]["tandem_payout"] == str(payout.pk)]
        assert transfer["id"] == payout.transfer_id
        assert transfer["amount"] * 10_000 == payout.amount_micros
        assert transfer["destination"] == payout.connected_account.account_id
        # every request for this payout carried the key derived from its id
        keys = {
            r.idempotency_key
            for r in fake_stripe.made("POST", "/v1/transfers")
            if r.params["metadata[tandem_payout]"] == str(payout.pk)
        }
        assert keys == {f"tandem-payout-{payout.pk}"}
        # payable: only the sub-cent dust is left; nothing pending
        balance = _payable(org)
        assert balance.debits_pending == 0
        assert balance.debits_posted == payout.amount_micros
        assert 0 <= balance.credits_posted - balance.debits_posted < 10_000
    # payable and clearing reconcile: clearing is down by exactly what was transferred
    clearing = Balance.objects.get(
        account=ledger.platform_account(kind=Account.Kind.STRIPE_CLEARING, currency="USD")
    )
    paid = sum(t["amount"] for t in transfers) * 10_000
    assert clearing.credits_posted - clearing.debits_posted == paid


@pytest.mark.django_db
def test_a_refused_transfer_leaves_the_payable_and_the_next_run_tries_again(cast, fake_stripe):
    [provider] = _providers(fake_stripe, count=1)
    account = ConnectedAccount.objects.get(organization=provider)
    fake_stripe.refuse_transfers_to[account.account_id] = (
        400,
        {
            "error": {
                "type": "invalid_request_error",
                "code": "balance_insufficient",
                "message": "Insufficient funds in Stripe account.",
            }
        },
    )
    run = services.payouts_run()
    assert len(run.failed) == 1
    failed = Payout.objects.get(pk=run.failed[0])
    assert failed.status == Payout.Status.FAILED
    assert "Insufficient funds" in failed.last_error
    balance = _payable(provider)
    assert (balance.debits_posted, balance.debits_pending) == (0, 0)

    # when Stripe has funds again, the next run pays (a new payout, a new key)
    del fake_stripe.refuse_transfers_to[account.account_id]
    run = services.payouts_run()
    assert len(run.paid) == 1
    assert Payout.objects.get(pk=run.paid[0]).idempotency_key != failed.idempotency_key
    assert _payable(provider).debits_posted == 30_000_000


@pytest.mark.django_db
def test_below_the_minimum_nothing_is_paid(cast, fake_stripe):
    org = cast.provider_a
    _earn(org, 19_990_000, "small")
    _onboarded(org, fake_stripe)
    assert services.payouts_run().paid == []
    assert fake_stripe.made("POST", "/v1/transfers") == []
    assert services.payouts_run(minimum_micros=10_000_000).paid != []


@pytest.mark.django_db
def test_providers_see_their_own_payouts_and_the_lines_they_cover(cast, fake_stripe):
    _earn(cast.provider_a, 25_000_000, "a-1")
    _earn(cast.provider_a, 5_000_000, "a-2")
    _earn(cast.provider_b, 40_000_000, "b-1")
    _onboarded(cast.provider_a, fake_stripe)
    _onboarded(cast.provider_b, fake_stripe)
    services.payouts_run()
    mine = cast.client(cast.provider_a, role="member")
    listed = mine.get("/api/v1/payouts/").json()["results"]
    assert [p["amount"] for p in listed] == ["30.00"]
    detail = mine.get(f"/api/v1/payouts/{listed[0]['id']}").json()
    assert sorted(line["transfer_id"] for line in detail["lines"]) == ["a-1", "a-2"]
    theirs = Payout.objects.get(organization=cast.provider_b)
    assert mine.get(f"/api/v1/payouts/{theirs.pk}").status_code == 404
    assert cast.client(cast.buyer_a).get("/api/v1/payouts/").status_code == 403
    assert cast.anonymous.get("/api/v1/payouts/").status_code == 401
    assert len(cast.finance.get("/api/v1/payouts/").json()["results"]) == 2


@pytest.mark.django_db
def test_a_transfer_webhook_completes_a_payout_the_run_did_not_record(cast, fake_stripe):
    [provider] = _providers(fake_stripe, count=1)

    def die_after_stripe(step: str, payout: Payout) -> None:
        if step == "accepted":
            raise Killed(step)

    with pytest.raises(Killed):
        services.payouts_run(checkpoint=die_after_stripe)
    [transfer] = fake_stripe.transfers.values()
    body, header = signed(make_event("evt_tr_1", "transfer.created", transfer))
    assert (
        cast.anonymous.post(
            "/api/v1/stripe/webhook",
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        ).status_code
        == 200
    )
    stripe_event_process(event_id="evt_tr_1")
    payout = Payout.objects.get(organization=provider)
    assert (payout.status, payout.transfer_id) == (Payout.Status.PAID, transfer["id"])
    services.payouts_run()
    assert len(fake_stripe.transfers) == 1
    assert StripeEvent.objects.get(event_id="evt_tr_1").outcome.endswith("is paid")


@pytest.mark.django_db
def test_reconciliation_matches_transfers_and_lists_what_stripe_does_not_know(cast, fake_stripe):
    from django.utils import timezone

    _providers(fake_stripe, count=2)
    services.payouts_run()
    # a ledger movement on clearing Stripe never saw (a manual adjustment)
    clearing = ledger.platform_account(kind=Account.Kind.STRIPE_CLEARING, currency="USD")
    adjustments = ledger.platform_account(kind=Account.Kind.ADJUSTMENTS, currency="USD")
    ledger.transfer_create(
        transfer_id="manual-fix",
        debit_account_id=clearing.pk,
        credit_account_id=adjustments.pk,
        amount_micros=1_000_000,
        currency="USD",
    )
    # and a Stripe movement the ledger never saw
    fake_stripe.balance_transactions.insert(
        0,
        {
            **fake_stripe.examples["balance_transaction"],
            "id": "txn_stray",
            "amount": 4200,
            "created": int(timezone.now().timestamp()),
            "source": "ch_stray",
        },
    )
    run = reconciliation_run(day=timezone.now().date(), currency="USD")
    assert run.matched == 2
    kinds = {(d.kind, d.source_id) for d in run.differences.all()}
    assert kinds == {
        ("missing_in_stripe", "ledger:manual-fix"),
        ("missing_in_ledger", "ch_stray"),
    }
    report = cast.finance.get(
        "/api/v1/billing/reconciliation", {"day": timezone.now().date().isoformat()}
    )
    assert report.status_code == 200
    assert len(report.json()["differences"]) == 2
    assert (
        cast.client(cast.buyer_a)
        .get("/api/v1/billing/reconciliation", {"day": "2026-01-01"})
        .status_code
        == 403
    )


@pytest.mark.django_db
def test_a_clean_run_passes_twelve_checkpoints_for_three_providers(cast, fake_stripe):
    _providers(fake_stripe)
    seen: list[str] = []
    services.payouts_run(checkpoint=lambda step, payout: seen.append(step))
    assert seen == ["planned", "submitting", "accepted", "recorded"] * 3
