"""Payouts to providers through Stripe Connect transfers: a provider's net payable
reserved as a ledger hold, sent with the payout's own idempotency key, posted or
released by Stripe's answer, and a restartable run over every onboarded provider."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from core.db import retry_transaction
from core.errors import NotFound
from ledger import services as ledger
from ledger.models import Account, Balance
from payments import events as pev
from payments.common import ACTOR, _account, _announce, _clearing, _stripe_message
from payments.models import ConnectedAccount, Payout
from payments.stripe_client import (
    floor_to_minor,
    from_minor,
    is_transient,
    stripe_client,
    stripe_currency,
    to_minor,
)

# A payout's reservation outlives any plausible wait for Stripe's answer; the
# ledger caps holds at 366 days.
PAYOUT_HOLD_TIMEOUT = timedelta(days=365)


# --- payouts ------------------------------------------------------------------------


@retry_transaction
def payout_plan(
    *, connected_account: ConnectedAccount, minimum_micros: int, currency: str
) -> Payout | None:
    """Reserve a provider's net payable (whole cents, at least the minimum) for one
    payout. None when it has one in flight or too little is owed."""
    organization = connected_account.organization
    payable = _account(organization, Account.Kind.PAYABLE, currency)
    balance = Balance.objects.select_for_update().get(account=payable)
    if Payout.objects.filter(organization=organization, status=Payout.Status.PENDING).exists():
        return None
    amount = floor_to_minor(balance.credit_side_available, currency) * from_minor(1, currency)
    if amount <= 0 or amount < minimum_micros:
        return None
    last = (
        Payout.objects.filter(organization=organization, status=Payout.Status.PAID)
        .order_by("-covers_through_position")
        .values_list("covers_through_position", flat=True)
        .first()
    )
    payout = Payout.objects.create(
        organization=organization,
        connected_account=connected_account,
        amount_micros=amount,
        currency=currency,
        covers_after_position=last or 0,
        covers_through_position=balance.position,
    )
    ledger.hold_create(
        hold_id=payout.hold_id,
        debit_account_id=payable.pk,
        credit_account_id=_clearing(currency).pk,
        amount_micros=amount,
        currency=currency,
        timeout=PAYOUT_HOLD_TIMEOUT,
        description=f"payout {payout.pk} to {connected_account.account_id}",
        actor=ACTOR,
    )
    return payout


@retry_transaction
def payout_record_paid(*, payout_id: int, transfer_id: str) -> bool:
    """Stripe accepted the transfer: post the reservation. False if already done."""
    payout = Payout.objects.select_for_update().get(pk=payout_id)
    if payout.status != Payout.Status.PENDING:
        return False
    ledger.hold_post(hold_id=payout.hold_id, actor=ACTOR)
    payout.status = Payout.Status.PAID
    payout.transfer_id = transfer_id
    payout.resolved_at = timezone.now()
    payout.last_error = ""
    payout.save()
    _announce(
        pev.payout_stream(payout.pk),
        pev.PAYOUT_PAID,
        pev.PayoutPaid(
            organization=payout.organization_id,
            payout=payout.pk,
            amount_micros=payout.amount_micros,
            currency=payout.currency,
            transfer=transfer_id,
        ),
        tenant_id=payout.organization_id,
    )
    return True


@retry_transaction
def payout_record_failed(*, payout_id: int, reason: str) -> bool:
    """Stripe refused the transfer: release the reservation; the payable waits for
    the next run."""
    payout = Payout.objects.select_for_update().get(pk=payout_id)
    if payout.status != Payout.Status.PENDING:
        return False
    ledger.hold_void(hold_id=payout.hold_id, actor=ACTOR)
    payout.status = Payout.Status.FAILED
    payout.last_error = reason[:500]
    payout.resolved_at = timezone.now()
    payout.save()
    _announce(
        pev.payout_stream(payout.pk),
        pev.PAYOUT_FAILED,
        pev.PayoutFailed(
            organization=payout.organization_id,
            payout=payout.pk,
            amount_micros=payout.amount_micros,
            currency=payout.currency,
            reason=reason[:500],
        ),
        tenant_id=payout.organization_id,
    )
    return True


Checkpoint = Callable[[str, Payout], None]


def _no_checkpoint(step: str, payout: Payout) -> None:
    return None


def payout_submit(*, payout: Payout, checkpoint: Checkpoint = _no_checkpoint) -> str:
    """Send one reserved payout to Stripe and record the answer."""
    client = stripe_client()
    checkpoint("submitting", payout)
    Payout.objects.filter(pk=payout.pk).update(
        attempts=F("attempts") + 1, submitted_at=timezone.now()
    )
    try:
        transfer = client.v1.transfers.create(
            params={
                "amount": to_minor(payout.amount_micros, payout.currency),
                "currency": stripe_currency(payout.currency),
                "destination": payout.connected_account.account_id,
                "transfer_group": f"payout-{payout.pk}",
                "metadata": {
                    "tandem_payout": str(payout.pk),
                    "tandem_organization": str(payout.organization_id),
                },
            },
            options={"idempotency_key": payout.idempotency_key},
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            Payout.objects.filter(pk=payout.pk).update(last_error=_stripe_message(exc))
            return "retry"
        payout_record_failed(payout_id=payout.pk, reason=_stripe_message(exc))
        return "failed"
    checkpoint("accepted", payout)
    payout_record_paid(payout_id=payout.pk, transfer_id=transfer.id)
    checkpoint("recorded", payout)
    return "paid"


@dataclass(slots=True)
class PayoutRun:
    paid: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)


def payouts_run(
    *,
    minimum_micros: int | None = None,
    currency: str | None = None,
    checkpoint: Checkpoint = _no_checkpoint,
) -> PayoutRun:
    """Pay every onboarded provider its net payable above the minimum.

    Idempotent and restartable: payouts left pending by an earlier run (killed,
    or Stripe did not answer) are sent again first, with their own idempotency key,
    so Stripe answers with the transfer it already made; only then are new ones
    planned, one per provider at a time."""
    minimum = settings.PAYOUT_MINIMUM_MICROS if minimum_micros is None else minimum_micros
    currency = currency or settings.TANDEM_CURRENCY
    stripe_client()
    run = PayoutRun()

    def send(payout: Payout) -> None:
        outcome = payout_submit(payout=payout, checkpoint=checkpoint)
        {"paid": run.paid, "failed": run.failed, "retry": run.retry}[outcome].append(payout.pk)

    pending = Payout.objects.filter(status=Payout.Status.PENDING, currency=currency)
    for payout in pending.select_related("connected_account").order_by("pk"):
        send(payout)
    accounts = ConnectedAccount.objects.filter(payouts_enabled=True).select_related("organization")
    for account in accounts.order_by("pk"):
        planned = payout_plan(connected_account=account, minimum_micros=minimum, currency=currency)
        if planned is None:
            continue
        checkpoint("planned", planned)
        send(planned)
    return run


@retry_transaction
def payout_apply_transfer(*, transfer: dict[str, Any], event_type: str) -> str:
    """``transfer.*`` webhooks: a transfer Stripe made for a payout still pending
    here (the run died before recording it) completes the payout; a reversal puts
    the money back on the provider's payable."""
    transfer_id = str(transfer.get("id") or "")
    raw = (transfer.get("metadata") or {}).get("tandem_payout")
    payout = None
    if raw and str(raw).isdigit():
        payout = Payout.objects.filter(pk=int(raw)).first()
    if payout is None:
        payout = Payout.objects.filter(transfer_id=transfer_id).first()
    if payout is None:
        return f"transfer {transfer_id} is not a Tandem payout"
    if payout.status == Payout.Status.PENDING:
        payout_record_paid(payout_id=payout.pk, transfer_id=transfer_id)
    reversals = (transfer.get("reversals") or {}).get("data") or []
    reversed_total = 0
    for reversal in reversals:
        amount = from_minor(int(reversal.get("amount") or 0), payout.currency)
        if amount <= 0:
            continue
        reversed_total += amount
        payable = _account(payout.organization, Account.Kind.PAYABLE, payout.currency)
        ledger.transfer_create(
            transfer_id=f"payout-reversal:{reversal.get('id')}",
            debit_account_id=_clearing(payout.currency).pk,
            credit_account_id=payable.pk,
            amount_micros=amount,
            currency=payout.currency,
            kind="payout_reversal",
            description=f"transfer {transfer_id} of payout {payout.pk} reversed",
            actor=ACTOR,
        )
    if reversed_total and reversed_total >= payout.amount_micros:
        Payout.objects.filter(pk=payout.pk).update(status=Payout.Status.REVERSED)
    payout.refresh_from_db()
    return f"payout {payout.pk} is {payout.status}"


def lookup_payout(payout_id: int) -> Payout:
    payout = Payout.objects.filter(pk=payout_id).first()
    if payout is None:
        raise NotFound(f"no payout {payout_id}")
    return payout
