"""Stripe webhooks: verified, stored by event id, processed by a worker.

``stripe_event_receive`` runs in the request. It checks the ``Stripe-Signature``
header against the raw body with the stripe library (HMAC-SHA256, timestamps at
most 300 s old) before it parses anything; a forged, stale, unsigned or
malformed delivery is refused with no side effect. A good one is stored under its
event id, which is unique: a second delivery of the same event only counts.

``stripe_event_process`` runs in a dramatiq actor (and the ``process_stripe_events``
sweep, which catches what a crashed worker left). It re-fetches from Stripe what
cannot be trusted to arrive in order (a connected account's status, a charge's
refunds when the event did not list them all) outside any transaction, then
applies the event in one transaction that also marks it processed. Every effect is
keyed by the Stripe object it mirrors, so duplicates and any delivery order give the
same ledger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import stripe
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.db import retry_transaction
from core.errors import InvalidInput
from payments import services
from payments.models import StripeEvent, TopUp
from payments.stripe_client import as_dict, object_id, stripe_client, stripe_configured

logger = logging.getLogger(__name__)

TOLERANCE_SECONDS = 300


class InvalidSignature(InvalidInput):
    code = "invalid_signature"


def _verify(payload: bytes, signature: str | None, secret: str) -> None:
    if not signature:
        raise InvalidSignature("the Stripe-Signature header is missing")
    if not secret:
        raise InvalidSignature("no webhook secret is configured")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, TOLERANCE_SECONDS)
        # The library bounds only the past. A timestamp from the future is no
        # delivery Stripe made, and one captured would replay for as long: refuse it.
        signed_at = int(dict(p.split("=", 1) for p in signature.split(",") if "=" in p)["t"])
        if signed_at > time.time() + TOLERANCE_SECONDS:
            raise ValueError("timestamp in the future")
    except (stripe.SignatureVerificationError, ValueError, IndexError, TypeError, KeyError):
        # A bad header, a wrong signature, a body that is not UTF-8, too old a
        # timestamp: the same answer for all, so nothing is learnt by probing.
        raise InvalidSignature(
            "the Stripe-Signature header does not match the body, or is too old"
        ) from None


def _parse(payload: bytes) -> dict[str, Any]:
    try:
        event = json.loads(payload)
        assert isinstance(event, dict)
        assert event.get("object") == "event"
        assert isinstance(event.get("id"), str) and event["id"]
        assert isinstance(event.get("type"), str) and event["type"]
        assert isinstance(event.get("created"), int)
        assert isinstance((event.get("data") or {}).get("object"), dict)
    except (ValueError, AssertionError):
        raise InvalidInput("the body is not a Stripe event") from None
    return event


def stripe_event_receive(
    *, payload: bytes, signature: str | None, secret: str
) -> tuple[StripeEvent, bool]:
    """Verify and store one delivery; ``(row, first delivery?)``."""
    _verify(payload, signature, secret)
    event = _parse(payload)
    defaults = {
        "type": event["type"][:100],
        "object_id": object_id(event["data"]["object"])[:255],
        "payload": event,
        "stripe_created": datetime.fromtimestamp(event["created"], tz=UTC),
        "livemode": bool(event.get("livemode")),
    }
    try:
        with transaction.atomic():
            row, created = StripeEvent.objects.get_or_create(
                event_id=event["id"][:255], defaults=defaults
            )
    except IntegrityError:  # a concurrent delivery of the same event won the insert
        row, created = StripeEvent.objects.get(event_id=event["id"][:255]), False
    if not created:
        StripeEvent.objects.filter(pk=row.pk).update(deliveries=F("deliveries") + 1)
    return row, created


# --- processing -------------------------------------------------------------------

Handler = Callable[[dict[str, Any], str, Any], str]


def _payment_intent(obj: dict[str, Any], event_type: str, fetched: Any) -> str:
    # An invoice's collection attempt (payments.invoice_payments), else a top-up.
    if services.is_invoice_payment(obj):
        return services.invoice_payment_apply_intent(intent=obj, event_type=event_type)
    return services.top_up_apply_payment_intent(intent=obj, event_type=event_type)


def _checkout_session(obj: dict[str, Any], event_type: str, fetched: Any) -> str:
    return services.top_up_apply_checkout_session(session=obj, event_type=event_type)


def _one_refund(stripe_refund: dict[str, Any], charge: dict[str, Any] | None = None) -> str:
    # A refund of an invoice payment (payments.invoice_refunds), else of a top-up.
    outcome = services.invoice_refund_apply_from_stripe(stripe_refund=stripe_refund, charge=charge)
    if outcome is not None:
        return outcome
    return services.refund_apply_from_stripe(stripe_refund=stripe_refund, charge=charge)


def _charge_refunded(obj: dict[str, Any], event_type: str, fetched: Any) -> str:
    refunds = fetched if fetched is not None else ((obj.get("refunds") or {}).get("data") or [])
    outcomes = [_one_refund(r, obj) for r in refunds]
    return "; ".join(outcomes) or "no refunds listed"


def _refund(obj: dict[str, Any], event_type: str, fetched: Any) -> str:
    return _one_refund(obj)


def _dispute(obj: dict[str, Any], event_type: str, fetched: Any) -> str:
    return services.dispute_apply(dispute=obj)


def _account(obj: dict[str, Any], event_type: str, fetched: Any) -> str:
    # stripe_event_process always supplies (account, as of when)
    account, as_of = fetched
    return services.connected_account_sync(account=account, as_of=as_of)


def _transfer(obj: dict[str, Any], event_type: str, fetched: Any) -> str:
    return services.payout_apply_transfer(transfer=obj, event_type=event_type)


def _noted(obj: dict[str, Any], event_type: str, fetched: Any) -> str:
    return f"{event_type} noted"


HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": _payment_intent,
    "payment_intent.payment_failed": _payment_intent,
    "payment_intent.processing": _payment_intent,
    "payment_intent.canceled": _payment_intent,
    "checkout.session.completed": _checkout_session,
    "checkout.session.async_payment_succeeded": _checkout_session,
    "checkout.session.expired": _checkout_session,
    "charge.refunded": _charge_refunded,
    "refund.created": _refund,
    "refund.updated": _refund,
    "charge.refund.updated": _refund,
    "charge.dispute.created": _dispute,
    "charge.dispute.updated": _dispute,
    "charge.dispute.closed": _dispute,
    "charge.dispute.funds_withdrawn": _dispute,
    "charge.dispute.funds_reinstated": _dispute,
    "account.updated": _account,
    "transfer.created": _transfer,
    "transfer.updated": _transfer,
    "transfer.reversed": _transfer,
    # The connected accounts' own bank payouts: Stripe runs them; kept as a record.
    "payout.paid": _noted,
    "payout.failed": _noted,
    "payout.created": _noted,
    "payout.updated": _noted,
}


def _refetch(row: StripeEvent) -> Any:
    """What must come from Stripe now rather than from the (possibly stale) event.
    Slow I/O: called outside any transaction."""
    obj = row.payload["data"]["object"]
    if row.type == "account.updated":
        if not stripe_configured():
            return None  # the embedded default: the event's copy, ordered by ``created``
        account = stripe_client().v1.accounts.retrieve(obj["id"])
        return as_dict(account), timezone.now()
    if row.type == "charge.refunded":
        listed = obj.get("refunds") or {}
        if listed.get("data") is not None and not listed.get("has_more"):
            return None  # the event lists every refund
        refunds = stripe_client().v1.refunds.list(params={"charge": obj["id"], "limit": 100})
        return [as_dict(r) for r in refunds.auto_paging_iter()]
    return None


def stripe_event_process(*, event_id: str) -> str:
    """Apply one stored event, once; raises (and counts the attempt) on failure so
    the actor retries it."""
    row = StripeEvent.objects.filter(event_id=event_id).first()
    if row is None:
        return f"no event {event_id}"
    if row.processed_at is not None:
        return row.outcome
    try:
        fetched = _refetch(row) if row.type in HANDLERS else None
        if row.type == "account.updated" and fetched is None:
            fetched = (row.payload["data"]["object"], row.stripe_created)
        return _apply(row.pk, fetched)
    except services.ProcessLater as exc:
        StripeEvent.objects.filter(pk=row.pk).update(
            attempts=F("attempts") + 1, last_error=str(exc)[:2000], waiting_for_id=exc.top_up_id
        )
        raise
    except Exception as exc:
        StripeEvent.objects.filter(pk=row.pk).update(
            attempts=F("attempts") + 1, last_error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        raise


@retry_transaction
def _apply(row_id: int, fetched: Any) -> str:
    row = StripeEvent.objects.select_for_update().get(pk=row_id)
    if row.processed_at is not None:
        return row.outcome
    handler = HANDLERS.get(row.type)
    obj = row.payload["data"]["object"]
    outcome = handler(obj, row.type, fetched) if handler else f"{row.type} is not handled"
    row.processed_at = timezone.now()
    row.attempts += 1
    row.outcome = outcome[:500]
    row.last_error = ""
    row.waiting_for = None
    row.save()
    return outcome


def stripe_events_process_pending(*, limit: int = 1000) -> tuple[int, int]:
    """Process stored events not yet processed, oldest delivery first; returns
    ``(processed, failed)``. A failing event is counted and left for the next sweep;
    it never blocks the others."""
    # Waiting events only once what they wait for has happened.
    ready = Q(waiting_for__isnull=True) | Q(waiting_for__status=TopUp.Status.SUCCEEDED)
    pending = list(
        StripeEvent.objects.filter(ready, processed_at__isnull=True)
        .order_by("received_at", "pk")
        .values_list("event_id", flat=True)[:limit]
    )
    done = failed = 0
    for event_id in pending:
        try:
            stripe_event_process(event_id=event_id)
            done += 1
        except services.ProcessLater as exc:
            logger.info("stripe event %s waits: %s", event_id, exc)
            failed += 1
        except Exception:
            logger.exception("stripe event %s failed", event_id)
            failed += 1
    return done, failed
