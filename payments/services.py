"""Writes of payments: top-ups, refunds, disputes, connected accounts, payouts.

Two habits run through the module:

- Stripe is never called inside a database transaction. A service records what it
  intends (a row, a ledger hold), commits, calls Stripe with an idempotency key
  derived from that row, then records the answer in a second transaction. A crash
  between the steps leaves a row that the next run (or the webhook) completes.
- Every movement of money is a journal entry through ledger.services with an id
  derived from our row or Stripe's object (``topup:<id>``, ``refund:<id>``,
  ``dispute:<dp_…>``, ``payout:<id>``), so doing a step twice moves nothing twice.

Accounts: a top-up debits the platform's ``stripe_clearing`` and credits the buyer's
prepaid ``credit``; a refund or a lost dispute reverses that from the unused credit
and, for credit already spent, from the buyer's ``receivable``; a payout moves the
provider's ``payable`` to ``stripe_clearing``. Stripe clearing is then what Stripe
holds for the platform, which the daily reconciliation checks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db.models import F, Sum
from django.utils import timezone

from core.db import retry_transaction
from core.errors import Conflict, IdempotencyConflict, InvalidInput, NotFound
from core.eventstore import NewEvent, event_append, stream_version
from core.models import Organization
from core.queue import task_send_on_commit
from ledger import services as ledger
from ledger.models import Account, Balance
from ledger.selectors import BalanceState, apply_event
from payments import events as pev
from payments.models import (
    AutoRecharge,
    ConnectedAccount,
    Dispute,
    Payout,
    Refund,
    StripeCustomer,
    StripeEvent,
    TopUp,
)
from payments.stripe_client import (
    PaymentFailed,
    as_dict,
    floor_to_minor,
    from_minor,
    is_transient,
    ledger_currency,
    object_id,
    stripe_client,
    stripe_currency,
    to_minor,
    unavailable,
)

# The app's public surface for the apps above it:
from payments.stripe_client import PaymentsUnavailable as PaymentsUnavailable
from payments.stripe_client import stripe_configured as stripe_configured

# The actors in payments/tasks.py, sent by name (core/queue.py).
STRIPE_EVENT_PROCESS_TASK = "stripe_event_process_task"
TOP_UP_SUBMIT_TASK = "top_up_submit_task"
INVOICE_PAYMENT_SUBMIT_TASK = "invoice_payment_submit_task"

logger = logging.getLogger(__name__)

ACTOR = "payments"
REFUND_HOLD_TIMEOUT = timedelta(days=7)
# A payout's reservation outlives any plausible wait for Stripe's answer; the
# ledger caps holds at 366 days.
PAYOUT_HOLD_TIMEOUT = timedelta(days=365)


class ProcessLater(Exception):
    """An event about a top-up whose payment is not applied yet (delivered out of
    order): it stays unprocessed, waiting for that top-up, and runs again once the
    payment's own event has credited it."""

    def __init__(self, message: str, *, top_up_id: int) -> None:
        super().__init__(message)
        self.top_up_id = top_up_id


# --- helpers ------------------------------------------------------------------


def _announce(stream_id: str, event_type: str, event: Any, *, tenant_id: int | None) -> None:
    """Append one payments event; the last step of the caller's transaction."""
    event_append(
        stream_type=pev.PAYMENTS_STREAM,
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[NewEvent(event_type, event.payload(), event.schema_version)],
        tenant_id=tenant_id,
        metadata={"actor": ACTOR},
    )


def _clearing(currency: str) -> Account:
    return ledger.platform_account(kind=Account.Kind.STRIPE_CLEARING, currency=currency)


def _account(organization: Organization, kind: str, currency: str) -> Account:
    return ledger.account_open(organization=organization, kind=kind, currency=currency)


def credit_available(*, account: Account, lock: bool = False) -> int:
    """Available prepaid credit (posted minus pending); ``lock`` holds the balance
    row to the end of the caller's transaction, so the figure stays true."""
    rows = Balance.objects.filter(account=account)
    if lock:
        rows = rows.select_for_update()
    return rows.get().credit_side_available


def _stripe_message(exc: stripe.StripeError) -> str:
    return str(getattr(exc, "user_message", None) or exc)[:500]


# --- customers and saved payment methods ------------------------------------------


def customer_ensure(*, organization: Organization) -> StripeCustomer:
    """The buyer org's Stripe customer, created the first time (Stripe's idempotency
    key is the org's id, so two racing first calls make one customer)."""
    found = StripeCustomer.objects.filter(organization=organization).first()
    if found is not None:
        return found
    client = stripe_client()
    try:
        customer = client.v1.customers.create(
            params={
                "name": organization.name,
                "metadata": {"tandem_organization": str(organization.pk)},
            },
            options={"idempotency_key": f"tandem-customer-{organization.pk}"},
        )
    except stripe.StripeError as exc:
        raise unavailable(exc) from exc
    row, _ = StripeCustomer.objects.get_or_create(
        organization=organization, defaults={"customer_id": customer.id}
    )
    return row


def payment_method_save(*, organization: Organization, payment_method_id: str) -> StripeCustomer:
    """Attach a payment method (from the Payment Element or a SetupIntent) to the
    buyer's customer and make it the one charged directly and by auto-recharge."""
    if not payment_method_id or not payment_method_id.startswith(("pm_", "card_", "src_")):
        raise InvalidInput(
            "payment_method must be a Stripe payment method id (pm_…)",
            details={"field": "payment_method"},
        )
    customer = customer_ensure(organization=organization)
    client = stripe_client()
    try:
        client.v1.payment_methods.attach(
            payment_method_id, params={"customer": customer.customer_id}
        )
        client.v1.customers.update(
            customer.customer_id,
            params={"invoice_settings": {"default_payment_method": payment_method_id}},
        )
    except stripe.CardError as exc:
        raise PaymentFailed(_stripe_message(exc), details={"field": "payment_method"}) from exc
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        raise InvalidInput(
            f"payment_method: {_stripe_message(exc)}", details={"field": "payment_method"}
        ) from exc
    StripeCustomer.objects.filter(pk=customer.pk).update(
        default_payment_method=payment_method_id, updated_at=timezone.now()
    )
    customer.refresh_from_db()
    return customer


# --- top-ups ------------------------------------------------------------------------


def top_up_check_amount(*, amount_micros: int, currency: str, field: str = "amount") -> None:
    low, high = settings.TOPUP_MINIMUM_MICROS, settings.TOPUP_MAXIMUM_MICROS
    if not low <= amount_micros <= high:
        raise InvalidInput(
            f"{field} must be from {low / 1_000_000:.2f} to {high / 1_000_000:.2f} {currency}",
            details={"field": field, "minimum_micros": low, "maximum_micros": high},
        )
    to_minor(amount_micros, currency, field=field)


@retry_transaction
def top_up_record(
    *,
    organization: Organization,
    amount_micros: int,
    currency: str,
    source: str,
    request_key: str,
) -> TopUp:
    """The top-up row for this request key, created once: a retried request (or a
    claim taken over after a crash) finds the same row, and so the same
    PaymentIntent through Stripe's idempotency key."""
    if not organization.is_buyer:
        raise InvalidInput(f"{organization.name} is not a buyer organization")
    top_up, created = TopUp.objects.get_or_create(
        organization=organization,
        request_key=request_key,
        defaults={"amount_micros": amount_micros, "currency": currency, "source": source},
    )
    if not created and (top_up.amount_micros, top_up.source) != (amount_micros, source):
        raise IdempotencyConflict(
            f"request key {request_key!r} was used for another top-up",
            details={"top_up": top_up.pk},
        )
    return top_up


@dataclass(frozen=True, slots=True)
class TopUpStarted:
    top_up: TopUp
    client_secret: str = ""


def _intent_params(top_up: TopUp, customer: StripeCustomer) -> dict[str, Any]:
    params: dict[str, Any] = {
        "amount": to_minor(top_up.amount_micros, top_up.currency),
        "currency": stripe_currency(top_up.currency),
        "customer": customer.customer_id,
        "payment_method_types": ["card"],
        "metadata": {
            "tandem_top_up": str(top_up.pk),
            "tandem_organization": str(top_up.organization_id),
        },
    }
    if top_up.source in (TopUp.Source.SAVED_METHOD, TopUp.Source.AUTO_RECHARGE):
        params.update(
            payment_method=customer.default_payment_method, confirm=True, off_session=True
        )
    return params


def top_up_submit(*, top_up: TopUp) -> TopUpStarted:
    """Create the top-up's PaymentIntent (or find it again) and record it.

    Nothing is credited here, whatever the PaymentIntent says: credit follows
    ``payment_intent.succeeded`` only."""
    client = stripe_client()
    if top_up.payment_intent_id:
        try:
            intent = client.v1.payment_intents.retrieve(top_up.payment_intent_id)
        except stripe.StripeError as exc:
            raise unavailable(exc) from exc
        return TopUpStarted(top_up, intent.client_secret or "")
    customer = customer_ensure(organization=top_up.organization)
    if top_up.source != TopUp.Source.PAYMENT_ELEMENT and not customer.default_payment_method:
        top_up_mark(top_up_id=top_up.pk, status=TopUp.Status.FAILED, message="no saved method")
        raise InvalidInput(
            "no saved payment method: save one first (POST /api/v1/billing/payment-methods)",
            details={"field": "use_saved_method"},
        )
    TopUp.objects.filter(pk=top_up.pk).update(attempts=F("attempts") + 1)
    try:
        intent = client.v1.payment_intents.create(
            params=_intent_params(top_up, customer),  # type: ignore[arg-type]
            options={"idempotency_key": f"tandem-topup-{top_up.pk}"},
        )
    except stripe.CardError as exc:
        # The PaymentIntent exists and failed: record it; the webhook says the same.
        failed = getattr(getattr(exc, "error", None), "payment_intent", None)
        top_up_mark(
            top_up_id=top_up.pk,
            status=TopUp.Status.FAILED,
            message=_stripe_message(exc),
            payment_intent_id=object_id(failed) or None,
        )
        raise PaymentFailed(_stripe_message(exc), details={"top_up": top_up.pk}) from exc
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        top_up_mark(top_up_id=top_up.pk, status=TopUp.Status.FAILED, message=_stripe_message(exc))
        raise InvalidInput(_stripe_message(exc), details={"top_up": top_up.pk}) from exc
    status = {
        "processing": TopUp.Status.PROCESSING,
        "succeeded": TopUp.Status.PROCESSING,  # credited when the webhook confirms
        "canceled": TopUp.Status.CANCELED,
    }.get(intent.status, TopUp.Status.REQUIRES_PAYMENT)
    top_up_mark(top_up_id=top_up.pk, status=status, payment_intent_id=intent.id)
    top_up.refresh_from_db()
    return TopUpStarted(top_up, intent.client_secret or "")


@retry_transaction
def top_up_mark(
    *, top_up_id: int, status: str, message: str = "", payment_intent_id: str | None = None
) -> None:
    """Move a top-up's status forward; a succeeded top-up never moves back."""
    top_up = TopUp.objects.select_for_update().get(pk=top_up_id)
    if payment_intent_id and not top_up.payment_intent_id:
        top_up.payment_intent_id = payment_intent_id
    if top_up.status != TopUp.Status.SUCCEEDED:
        top_up.status = status
        top_up.failure_message = message[:500]
    top_up.save()


def checkout_session_create(*, top_up: TopUp, success_url: str, cancel_url: str) -> TopUp:
    """Stripe's hosted Checkout page for a top-up; credit follows the webhook, as
    with the Payment Element."""
    if top_up.checkout_session_id:
        return top_up
    customer = customer_ensure(organization=top_up.organization)
    client = stripe_client()
    metadata = {
        "tandem_top_up": str(top_up.pk),
        "tandem_organization": str(top_up.organization_id),
    }
    TopUp.objects.filter(pk=top_up.pk).update(attempts=F("attempts") + 1)
    try:
        session = client.v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "customer": customer.customer_id,
                "client_reference_id": str(top_up.pk),
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": stripe_currency(top_up.currency),
                            "unit_amount": to_minor(top_up.amount_micros, top_up.currency),
                            "product_data": {"name": "Tandem prepaid credits"},
                        },
                    }
                ],
                "payment_intent_data": {"metadata": metadata},
                "metadata": metadata,
                "success_url": success_url,
                "cancel_url": cancel_url,
            },
            options={"idempotency_key": f"tandem-topup-{top_up.pk}"},
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        top_up_mark(top_up_id=top_up.pk, status=TopUp.Status.FAILED, message=_stripe_message(exc))
        raise InvalidInput(_stripe_message(exc), details={"top_up": top_up.pk}) from exc
    TopUp.objects.filter(pk=top_up.pk).update(
        checkout_session_id=session.id,
        checkout_url=session.url or "",
        status=TopUp.Status.REQUIRES_PAYMENT,
    )
    top_up.refresh_from_db()
    return top_up


def _wake_waiting(top_up_id: int) -> None:
    """Send again, after this commit, the events that waited for this top-up."""
    waiting = list(
        StripeEvent.objects.filter(waiting_for_id=top_up_id, processed_at__isnull=True)
        .order_by("pk")
        .values_list("event_id", flat=True)
    )
    for event_id in waiting:
        task_send_on_commit(STRIPE_EVENT_PROCESS_TASK, event_id)


def _find_top_up(metadata: Any, payment_intent_id: str = "", charge_id: str = "") -> TopUp | None:
    query = TopUp.objects.select_for_update()
    raw = (metadata or {}).get("tandem_top_up")
    if raw and str(raw).isdigit():
        found = query.filter(pk=int(raw)).first()
        if found is not None:
            return found
    if payment_intent_id:
        found = query.filter(payment_intent_id=payment_intent_id).first()
        if found is not None:
            return found
    if charge_id:
        return query.filter(charge_id=charge_id).first()
    return None


def _top_up_credit(
    top_up: TopUp, *, amount_minor: int, currency: str, intent_id: str, charge_id: str
) -> str:
    """Grant the credit Stripe collected, once (the caller holds the row lock)."""
    if top_up.status == TopUp.Status.SUCCEEDED:
        return f"top-up {top_up.pk} was credited already"
    currency = ledger_currency(currency)
    if currency != top_up.currency:
        logger.error("top-up %s paid in %s, not %s", top_up.pk, currency, top_up.currency)
        return f"top-up {top_up.pk}: paid in {currency}, not {top_up.currency}; not credited"
    amount = from_minor(amount_minor, currency)
    credit = _account(top_up.organization, Account.Kind.CREDIT, currency)
    result = ledger.transfer_create(
        transfer_id=top_up.transfer_id,
        debit_account_id=_clearing(currency).pk,
        credit_account_id=credit.pk,
        amount_micros=amount,
        currency=currency,
        kind="top_up",
        description=f"top-up {top_up.pk} paid by card ({intent_id})",
        actor=ACTOR,
    )
    top_up.status = TopUp.Status.SUCCEEDED
    top_up.credited_micros = amount
    top_up.succeeded_at = timezone.now()
    top_up.failure_message = ""
    top_up.payment_intent_id = top_up.payment_intent_id or intent_id or None
    top_up.charge_id = charge_id or top_up.charge_id
    top_up.save()
    _wake_waiting(top_up.pk)
    if result.status == "posted":
        _announce(
            pev.top_up_stream(top_up.pk),
            pev.TOP_UP_CREDITED,
            pev.TopUpCredited(
                organization=top_up.organization_id,
                top_up=top_up.pk,
                amount_micros=amount,
                currency=currency,
                payment_intent=intent_id,
            ),
            tenant_id=top_up.organization_id,
        )
    return f"top-up {top_up.pk} credited {amount} micros"


@retry_transaction
def top_up_apply_payment_intent(*, intent: dict[str, Any], event_type: str) -> str:
    """Bring a top-up in line with its PaymentIntent. Order-free: success is final
    and wins over any failure or cancellation delivered before or after it."""
    intent_id = str(intent.get("id") or "")
    top_up = _find_top_up(intent.get("metadata"), payment_intent_id=intent_id)
    if top_up is None:
        return f"payment intent {intent_id} is not a Tandem top-up"
    if not top_up.payment_intent_id:
        top_up.payment_intent_id = intent_id
        top_up.save(update_fields=["payment_intent_id", "updated_at"])
    status = intent.get("status")
    if status == "succeeded":
        received = intent.get("amount_received") or intent.get("amount") or 0
        return _top_up_credit(
            top_up,
            amount_minor=int(received),
            currency=str(intent.get("currency", "")),
            intent_id=intent_id,
            charge_id=object_id(intent.get("latest_charge")),
        )
    if top_up.status == TopUp.Status.SUCCEEDED:
        return f"top-up {top_up.pk} succeeded already; {event_type} changes nothing"
    if status == "canceled":
        top_up.status = TopUp.Status.CANCELED
    elif event_type == "payment_intent.payment_failed":
        top_up.status = TopUp.Status.FAILED
        error = intent.get("last_payment_error") or {}
        top_up.failure_message = str(error.get("message") or "payment failed")[:500]
    elif status == "processing":
        top_up.status = TopUp.Status.PROCESSING
    top_up.save()
    return f"top-up {top_up.pk} is {top_up.status}"


@retry_transaction
def top_up_apply_checkout_session(*, session: dict[str, Any], event_type: str) -> str:
    top_up = _find_top_up(session.get("metadata"))
    if top_up is None and str(session.get("client_reference_id") or "").isdigit():
        top_up = (
            TopUp.objects.select_for_update().filter(pk=int(session["client_reference_id"])).first()
        )
    if top_up is None:
        return f"checkout session {session.get('id')} is not a Tandem top-up"
    if event_type == "checkout.session.expired":
        if top_up.status != TopUp.Status.SUCCEEDED:
            top_up.status = TopUp.Status.CANCELED
            top_up.save()
        return f"top-up {top_up.pk} is {top_up.status}"
    if session.get("payment_status") != "paid":
        return f"checkout session {session.get('id')} is not paid yet"
    return _top_up_credit(
        top_up,
        amount_minor=int(session.get("amount_total") or 0),
        currency=str(session.get("currency", "")),
        intent_id=object_id(session.get("payment_intent")),
        charge_id="",
    )


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


def _dispute_takes_funds(status: str) -> bool:
    # Inquiries (warning_*) take no money; every other dispute does, from opening.
    return not status.startswith("warning_")


_FINAL_DISPUTE_STATUSES = {"won", "lost", "warning_closed"}


@retry_transaction
def dispute_apply(*, dispute: dict[str, Any]) -> str:
    """Mirror a chargeback in the ledger. Stripe takes the money when it opens and
    returns it if won, so: ``dispute:<id>`` claws it back once (whatever event
    arrives first), and ``dispute-won:<id>`` reverses that claw-back once won."""
    dispute_id = str(dispute.get("id") or "")
    status = str(dispute.get("status") or "")
    currency = ledger_currency(str(dispute.get("currency") or settings.TANDEM_CURRENCY))
    row = Dispute.objects.select_for_update().filter(dispute_id=dispute_id).first()
    if row is None:
        top_up = _find_top_up(
            dispute.get("metadata"),
            payment_intent_id=object_id(dispute.get("payment_intent")),
            charge_id=object_id(dispute.get("charge")),
        )
        if top_up is not None and top_up.status != TopUp.Status.SUCCEEDED:
            raise ProcessLater(
                f"dispute {dispute_id}: top-up {top_up.pk} is not credited yet",
                top_up_id=top_up.pk,
            )
        row = Dispute.objects.create(
            dispute_id=dispute_id,
            top_up=top_up,
            charge_id=object_id(dispute.get("charge")),
            amount_micros=from_minor(int(dispute.get("amount") or 0), currency),
            currency=currency,
            status=status,
            reason=str(dispute.get("reason") or "")[:100],
        )
    if row.status not in _FINAL_DISPUTE_STATUSES:
        row.status = status  # a stale "open" never undoes a final status
    top_up = row.top_up
    notes = []
    if top_up is not None and _dispute_takes_funds(row.status) and not row.withdrawn:
        row.credit_micros, row.receivable_micros = top_up_claw_back(
            transfer_id=f"dispute:{dispute_id}",
            organization=top_up.organization,
            amount_micros=row.amount_micros,
            currency=row.currency,
            why=f"chargeback {dispute_id} on top-up {top_up.pk} ({row.reason})",
        )
        row.withdrawn = True
        notes.append("clawed back")
    if top_up is not None and row.status == "won" and row.withdrawn and not row.reinstated:
        legs: list[tuple[int, str, int]] = [(_clearing(row.currency).pk, "D", row.amount_micros)]
        if row.credit_micros:
            credit = _account(top_up.organization, Account.Kind.CREDIT, row.currency)
            legs.append((credit.pk, "C", row.credit_micros))
        if row.receivable_micros:
            owed = _account(top_up.organization, Account.Kind.RECEIVABLE, row.currency)
            legs.append((owed.pk, "C", row.receivable_micros))
        ledger.entry_post(
            entry=ledger.EntryRequest(
                transfer_id=f"dispute-won:{dispute_id}",
                currency=row.currency,
                legs=tuple(legs),
                kind="claw_back_reversal",
                description=f"chargeback {dispute_id} won: funds reinstated",
            ),
            actor=ACTOR,
        )
        row.reinstated = True
        notes.append("reinstated")
    row.save()
    if notes:
        _announce(
            pev.dispute_stream(dispute_id),
            pev.DISPUTE_CHANGED,
            pev.DisputeChanged(
                organization=top_up.organization_id if top_up else None,
                dispute=dispute_id,
                status=row.status,
                amount_micros=row.amount_micros,
                currency=row.currency,
                credit_micros=row.credit_micros,
                receivable_micros=row.receivable_micros,
            ),
            tenant_id=top_up.organization_id if top_up else None,
        )
    if top_up is None:
        return f"dispute {dispute_id} ({row.status}) is not on a Tandem top-up; recorded only"
    return f"dispute {dispute_id} {row.status}: " + (", ".join(notes) or "no change")


# --- auto-recharge ----------------------------------------------------------------


@retry_transaction
def auto_recharge_set(
    *,
    organization: Organization,
    enabled: bool,
    threshold_micros: int,
    amount_micros: int,
    daily_cap_micros: int,
    currency: str,
) -> AutoRecharge:
    if not organization.is_buyer:
        raise InvalidInput(f"{organization.name} is not a buyer organization")
    top_up_check_amount(amount_micros=amount_micros, currency=currency)
    if threshold_micros < 0:
        raise InvalidInput("threshold must not be negative", details={"field": "threshold"})
    if daily_cap_micros < amount_micros:
        raise InvalidInput(
            "daily_cap must be at least the recharge amount", details={"field": "daily_cap"}
        )
    credit = _account(organization, Account.Kind.CREDIT, currency)
    balance = Balance.objects.select_for_update().get(account=credit)  # no write slips by
    row, _ = AutoRecharge.objects.select_for_update().update_or_create(
        organization=organization,
        defaults={
            "enabled": enabled,
            "currency": currency,
            "threshold_micros": threshold_micros,
            "amount_micros": amount_micros,
            "daily_cap_micros": daily_cap_micros,
            "armed": True,  # a new setting starts a new episode
            "seen_position": balance.position,
            "debits_posted": balance.debits_posted,
            "credits_posted": balance.credits_posted,
            "debits_pending": balance.debits_pending,
            "credits_pending": balance.credits_pending,
        },
    )
    return row


def _charged_today(organization_id: int, now: datetime) -> int:
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (
        TopUp.objects.filter(
            organization_id=organization_id,
            source=TopUp.Source.AUTO_RECHARGE,
            created_at__gte=start,
        )
        .exclude(status__in=[TopUp.Status.FAILED, TopUp.Status.CANCELED])
        .aggregate(s=Sum("amount_micros"))["s"]
        or 0
    )


def auto_recharge_check(
    *,
    organization_id: int,
    account_id: int,
    event_type: str,
    payload: dict[str, Any],
    position: int,
    now: datetime,
) -> TopUp | None:
    """Apply one ledger event to the buyer's tracked credit balance and fire the
    auto-recharge if that left available credit below the threshold and it has not
    fired since credit was last at or above it. Runs in the follower's transaction;
    the charge itself is sent to Stripe after the commit."""
    setting = (
        AutoRecharge.objects.select_for_update()
        .select_related("organization")
        .filter(organization_id=organization_id, enabled=True)
        .first()
    )
    if setting is None or position <= setting.seen_position:
        return None  # before the setting was made: its snapshot includes this event
    state = BalanceState(
        account_id=account_id,
        normal_side="C",
        debits_posted=setting.debits_posted,
        credits_posted=setting.credits_posted,
        debits_pending=setting.debits_pending,
        credits_pending=setting.credits_pending,
    )
    states = defaultdict(lambda: BalanceState(account_id=0), {account_id: state})
    apply_event(states, event_type, payload, position)
    setting.seen_position = position
    setting.debits_posted, setting.credits_posted = state.debits_posted, state.credits_posted
    setting.debits_pending, setting.credits_pending = state.debits_pending, state.credits_pending
    available = state.available
    if available >= setting.threshold_micros:
        setting.armed = True
        setting.save()
        return None
    if not setting.armed:
        setting.save()
        return None  # fired already for this crossing
    setting.armed = False
    setting.crossings += 1
    setting.last_triggered_at = now
    setting.save()
    reason = ""
    has_method = StripeCustomer.objects.filter(
        organization_id=organization_id, default_payment_method__gt=""
    ).exists()
    if not has_method:
        reason = "no saved payment method"
    elif _charged_today(organization_id, now) + setting.amount_micros > setting.daily_cap_micros:
        reason = "daily cap reached"
    if reason:
        _announce(
            pev.recharge_stream(organization_id),
            pev.AUTO_RECHARGE_SKIPPED,
            pev.AutoRechargeSkipped(
                organization=organization_id,
                reason=reason,
                available_micros=available,
                threshold_micros=setting.threshold_micros,
            ),
            tenant_id=organization_id,
        )
        return None
    top_up = TopUp.objects.create(
        organization=setting.organization,
        amount_micros=setting.amount_micros,
        currency=setting.currency,
        source=TopUp.Source.AUTO_RECHARGE,
        request_key=f"auto-recharge:{setting.crossings}:{now.date().isoformat()}",
    )
    _announce(
        pev.recharge_stream(organization_id),
        pev.AUTO_RECHARGE_TRIGGERED,
        pev.AutoRechargeTriggered(
            organization=organization_id,
            top_up=top_up.pk,
            amount_micros=top_up.amount_micros,
            available_micros=available,
            threshold_micros=setting.threshold_micros,
        ),
        tenant_id=organization_id,
    )

    task_send_on_commit(TOP_UP_SUBMIT_TASK, top_up.pk)
    return top_up


def top_ups_resume(*, older_than: timedelta = timedelta(minutes=1)) -> int:
    """Send saved-method top-ups (auto-recharge) still unsent to Stripe: a crash
    after the follower committed, or Stripe was down. Same idempotency key."""
    due = TopUp.objects.filter(
        status=TopUp.Status.PENDING,
        source__in=[TopUp.Source.AUTO_RECHARGE],
        created_at__lte=timezone.now() - older_than,
    ).order_by("pk")
    sent = 0
    for top_up in due:
        try:
            top_up_submit(top_up=top_up)
            sent += 1
        except (PaymentFailed, InvalidInput):
            sent += 1  # recorded as failed
        except Exception:  # a transient Stripe error: next sweep
            logger.exception("top-up %s: Stripe did not answer", top_up.pk)
    return sent


# --- connected accounts (providers) ----------------------------------------------


def connected_account_create(
    *, organization: Organization, country: str | None = None, email: str = ""
) -> ConnectedAccount:
    """The provider's Stripe Connect Express account, created once."""
    if not organization.is_provider:
        raise InvalidInput(f"{organization.name} is not a provider organization")
    found = ConnectedAccount.objects.filter(organization=organization).first()
    if found is not None:
        return found
    country = (country or settings.STRIPE_CONNECT_DEFAULT_COUNTRY).upper()
    if len(country) != 2 or not country.isalpha():
        raise InvalidInput("country must be a two-letter ISO code", details={"field": "country"})
    params: dict[str, Any] = {
        "type": "express",
        "country": country,
        "capabilities": {"transfers": {"requested": True}},
        "business_profile": {"name": organization.name},
        "metadata": {"tandem_organization": str(organization.pk)},
    }
    if email:
        params["email"] = email
    client = stripe_client()
    try:
        account = client.v1.accounts.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": f"tandem-connect-{organization.pk}"},
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        raise InvalidInput(_stripe_message(exc)) from exc
    fields = as_dict(account)
    row, _ = ConnectedAccount.objects.get_or_create(
        organization=organization,
        defaults={
            "account_id": account.id,
            "country": country,
            "details_submitted": bool(fields.get("details_submitted")),
            "charges_enabled": bool(fields.get("charges_enabled")),
            "payouts_enabled": bool(fields.get("payouts_enabled")),
        },
    )
    return row


def connected_account_record(
    *, organization: Organization, account_id: str, country: str
) -> ConnectedAccount:
    """Link a provider to a Connect account made outside Tandem (in Stripe's
    dashboard, or the demo's local one); its status follows ``account.updated``."""
    if not organization.is_provider:
        raise InvalidInput(f"{organization.name} is not a provider organization")
    if not account_id.startswith("acct_"):
        raise InvalidInput("account_id must be a Stripe account id (acct_…)")
    row, _ = ConnectedAccount.objects.get_or_create(
        organization=organization, defaults={"account_id": account_id, "country": country.upper()}
    )
    return row


def account_link_create(
    *, connected_account: ConnectedAccount, refresh_url: str, return_url: str
) -> str:
    """A one-time onboarding link for the provider (it expires in minutes, so it
    is made on request and never stored)."""
    client = stripe_client()
    try:
        link = client.v1.account_links.create(
            params={
                "account": connected_account.account_id,
                "refresh_url": refresh_url,
                "return_url": return_url,
                "type": "account_onboarding",
            }
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        raise InvalidInput(_stripe_message(exc)) from exc
    return str(link.url)


@retry_transaction
def connected_account_sync(*, account: dict[str, Any], as_of: datetime) -> str:
    """Status from an ``account.updated`` (the account as re-fetched from Stripe, or
    the event's copy when Stripe is not configured): a copy older than the last
    applied changes nothing."""
    row = (
        ConnectedAccount.objects.select_for_update()
        .filter(account_id=str(account.get("id") or ""))
        .first()
    )
    if row is None:
        return f"account {account.get('id')} is not a Tandem provider's"
    if row.synced_at is not None and as_of < row.synced_at:
        return f"account {row.account_id}: older than what was applied; ignored"
    requirements = account.get("requirements") or {}
    row.details_submitted = bool(account.get("details_submitted"))
    row.charges_enabled = bool(account.get("charges_enabled"))
    row.payouts_enabled = bool(account.get("payouts_enabled"))
    row.requirements_due = list(requirements.get("currently_due") or [])
    row.synced_at = as_of
    row.save()
    return f"account {row.account_id} is {row.status}"


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


# --- reconciliation ---------------------------------------------------------------


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def lookup_payout(payout_id: int) -> Payout:
    payout = Payout.objects.filter(pk=payout_id).first()
    if payout is None:
        raise NotFound(f"no payout {payout_id}")
    return payout
