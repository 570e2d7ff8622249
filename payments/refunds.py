"""Refunds of top-ups, and the claw-back they share with disputes: money taken back
from a buyer's unused credit as far as it goes, the rest (credit already spent) as a
receivable."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import stripe
from django.db.models import Sum
from django.utils import timezone

from core.db import retry_transaction
from core.errors import Conflict, InvalidInput
from core.models import Organization
from ledger import services as ledger
from ledger.models import Account
from payments import events as pev
from payments.common import (
    ACTOR,
    ProcessLater,
    _account,
    _announce,
    _clearing,
    _stripe_message,
    credit_available,
)
from payments.models import Refund, TopUp
from payments.stripe_client import (
    as_dict,
    from_minor,
    is_transient,
    object_id,
    stripe_client,
    to_minor,
    unavailable,
)
from payments.top_ups import _find_top_up

REFUND_HOLD_TIMEOUT = timedelta(days=7)


# --- claw-backs (refunds and disputes) ----------------------------------------------


def top_up_claw_back(
    *, transfer_id: str, organization: Organization, amount_micros: int, currency: str, why: str
) -> tuple[int, int]:
    """Take ``amount`` back from a buyer into Stripe clearing: from unused credit as
    far as it goes, the rest (credit already spent on usage) as a receivable.
    Returns ``(from credit, from receivable)``. The credit row stays locked to the
    end of the caller's transaction, so the split is what the ledger sees."""
    credit = _account(organization, Account.Kind.CREDIT, currency)
    available = credit_available(account=credit, lock=True)
    from_credit = min(amount_micros, max(0, available))
    owed = amount_micros - from_credit
    legs: list[tuple[int, str, int]] = []
    if from_credit:
        legs.append((credit.pk, "D", from_credit))
    if owed:
        legs.append((_account(organization, Account.Kind.RECEIVABLE, currency).pk, "D", owed))
    legs.append((_clearing(currency).pk, "C", amount_micros))
    ledger.entry_post(
        entry=ledger.EntryRequest(
            transfer_id=transfer_id,
            currency=currency,
            legs=tuple(legs),
            kind="claw_back",
            description=why[:500],
        ),
        actor=ACTOR,
    )
    return from_credit, owed


def top_up_refundable(*, top_up: TopUp) -> int:
    """What may still be refunded of a top-up: what it credited, less refunds not
    failed and disputes whose money Stripe took."""
    refunded = (
        top_up.refunds.exclude(status=Refund.Status.FAILED).aggregate(s=Sum("amount_micros"))["s"]
        or 0
    )
    disputed = (
        top_up.disputes.filter(withdrawn=True, reinstated=False).aggregate(s=Sum("amount_micros"))[
            "s"
        ]
        or 0
    )
    return max(0, top_up.credited_micros - refunded - disputed)


@retry_transaction
def _refund_reserve(
    *, top_up_id: int, amount_micros: int | None, reason: str, actor: str
) -> Refund:
    top_up = TopUp.objects.select_for_update().select_related("organization").get(pk=top_up_id)
    if top_up.status != TopUp.Status.SUCCEEDED:
        raise Conflict(
            f"top-up {top_up.pk} is {top_up.status}; only a paid top-up can be refunded",
            details={"top_up": top_up.pk},
        )
    credit = _account(top_up.organization, Account.Kind.CREDIT, top_up.currency)
    unused = max(0, credit_available(account=credit, lock=True))
    refundable = top_up_refundable(top_up=top_up)
    limit = min(unused, refundable)
    amount = limit - limit % 10_000 if amount_micros is None else amount_micros
    if amount <= 0 or amount > limit:
        raise InvalidInput(
            f"amount must be more than 0 and at most {limit / 1_000_000:.2f} "
            f"{top_up.currency}: the unused credit ({unused} micros) or what is left "
            f"of the top-up ({refundable} micros), whichever is less",
            details={"field": "amount", "refundable_micros": limit},
        )
    to_minor(amount, top_up.currency)
    refund = Refund.objects.create(
        top_up=top_up,
        amount_micros=amount,
        currency=top_up.currency,
        reason=reason[:500],
        requested_by=actor[:100],
    )
    # Reserve the credit now, so the buyer cannot spend it while Stripe answers.
    ledger.hold_create(
        hold_id=refund.hold_id,
        debit_account_id=credit.pk,
        credit_account_id=_clearing(top_up.currency).pk,
        amount_micros=amount,
        currency=top_up.currency,
        timeout=REFUND_HOLD_TIMEOUT,
        description=f"refund {refund.pk} of top-up {top_up.pk}: {reason}"[:500],
        actor=actor,
    )
    return refund


def refund_create(*, top_up_id: int, amount_micros: int | None, reason: str, actor: str) -> Refund:
    """A finance refund of a top-up, partial or full, up to the unused credit."""
    if not reason.strip():
        raise InvalidInput("a refund needs a reason", details={"field": "reason"})
    stripe_client()  # fail fast (503) before reserving anything
    refund = _refund_reserve(
        top_up_id=top_up_id, amount_micros=amount_micros, reason=reason.strip(), actor=actor
    )
    return refund_submit(refund=refund)


def refund_submit(*, refund: Refund) -> Refund:
    """Ask Stripe for a reserved refund (idempotency key from the refund's id) and
    record the answer. A transient failure leaves it pending for a retry."""
    client = stripe_client()
    top_up = refund.top_up
    try:
        stripe_refund = client.v1.refunds.create(
            params={
                "payment_intent": top_up.payment_intent_id or "",
                "amount": to_minor(refund.amount_micros, refund.currency),
                "metadata": {"tandem_refund": str(refund.pk), "tandem_top_up": str(top_up.pk)},
            },
            options={"idempotency_key": f"tandem-refund-{refund.pk}"},
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        refund_fail(refund_id=refund.pk, message=_stripe_message(exc))
        raise Conflict(
            f"Stripe refused the refund: {_stripe_message(exc)}", details={"refund": refund.pk}
        ) from exc
    refund_settle(refund_id=refund.pk, stripe_refund=as_dict(stripe_refund))
    refund.refresh_from_db()
    return refund


@retry_transaction
def refund_settle(*, refund_id: int, stripe_refund: dict[str, Any]) -> str:
    """Post (Stripe accepted) or release (Stripe refused) a reserved refund, once."""
    refund = Refund.objects.select_for_update().select_related("top_up").get(pk=refund_id)
    if refund.status != Refund.Status.PENDING:
        return f"refund {refund.pk} is {refund.status} already"
    status = stripe_refund.get("status")
    if status in ("failed", "canceled"):
        ledger.hold_void(hold_id=refund.hold_id, actor=ACTOR)
        refund.status = Refund.Status.FAILED
        refund.failure_message = str(stripe_refund.get("failure_reason") or status)[:500]
    else:
        ledger.hold_post(hold_id=refund.hold_id, actor=ACTOR)
        refund.status = Refund.Status.SUCCEEDED
        refund.credit_micros = refund.amount_micros
    refund.stripe_refund_id = str(stripe_refund.get("id") or "") or None
    refund.resolved_at = timezone.now()
    refund.save()
    if refund.status == Refund.Status.SUCCEEDED:
        _announce_refund(refund)
    return f"refund {refund.pk} {refund.status}"


def _announce_refund(refund: Refund) -> None:
    _announce(
        pev.top_up_stream(refund.top_up_id),
        pev.REFUND_ISSUED,
        pev.RefundIssued(
            organization=refund.top_up.organization_id,
            top_up=refund.top_up_id,
            refund=refund.pk,
            amount_micros=refund.amount_micros,
            currency=refund.currency,
            credit_micros=refund.credit_micros,
            receivable_micros=refund.receivable_micros,
            stripe_refund=refund.stripe_refund_id or "",
        ),
        tenant_id=refund.top_up.organization_id,
    )


@retry_transaction
def refund_fail(*, refund_id: int, message: str) -> None:
    refund = Refund.objects.select_for_update().get(pk=refund_id)
    if refund.status != Refund.Status.PENDING:
        return
    ledger.hold_void(hold_id=refund.hold_id, actor=ACTOR)
    refund.status = Refund.Status.FAILED
    refund.failure_message = message[:500]
    refund.resolved_at = timezone.now()
    refund.save()


@retry_transaction
def refund_apply_from_stripe(*, stripe_refund: dict[str, Any], charge: dict | None = None) -> str:
    """A refund as Stripe reports it (``charge.refunded``, ``refund.*``). One of
    ours settles its reservation; one made in Stripe's dashboard is clawed back
    from the buyer directly. Keyed by the refund's id: once, in any order."""
    refund_id = str(stripe_refund.get("id") or "")
    status = stripe_refund.get("status")
    known = Refund.objects.select_for_update().filter(stripe_refund_id=refund_id).first()
    if known is None:
        raw = (stripe_refund.get("metadata") or {}).get("tandem_refund")
        if raw and str(raw).isdigit():
            known = Refund.objects.select_for_update().filter(pk=int(raw)).first()
    if known is not None:
        if known.status == Refund.Status.PENDING:
            return refund_settle(refund_id=known.pk, stripe_refund=stripe_refund)
        return f"refund {known.pk} is {known.status} already"
    if status in ("failed", "canceled"):
        return f"refund {refund_id} {status} at Stripe; nothing to claw back"
    intent_id = object_id(stripe_refund.get("payment_intent")) or object_id(
        (charge or {}).get("payment_intent")
    )
    top_up = _find_top_up(
        (charge or {}).get("metadata"),
        payment_intent_id=intent_id,
        charge_id=object_id(stripe_refund.get("charge")),
    )
    if top_up is None:
        return f"refund {refund_id} is not for a Tandem top-up"
    if top_up.status != TopUp.Status.SUCCEEDED:
        raise ProcessLater(
            f"refund {refund_id}: top-up {top_up.pk} is not credited yet", top_up_id=top_up.pk
        )
    amount = from_minor(int(stripe_refund.get("amount") or 0), top_up.currency)
    from_credit, owed = top_up_claw_back(
        transfer_id=f"refund:{refund_id}",
        organization=top_up.organization,
        amount_micros=amount,
        currency=top_up.currency,
        why=f"refund {refund_id} of top-up {top_up.pk} made in Stripe",
    )
    refund = Refund.objects.create(
        top_up=top_up,
        amount_micros=amount,
        currency=top_up.currency,
        status=Refund.Status.SUCCEEDED,
        origin=Refund.Origin.STRIPE,
        stripe_refund_id=refund_id,
        reason="refunded in Stripe",
        credit_micros=from_credit,
        receivable_micros=owed,
        resolved_at=timezone.now(),
    )
    _announce_refund(refund)
    return f"refund {refund_id} clawed back: {from_credit} from credit, {owed} owed"
