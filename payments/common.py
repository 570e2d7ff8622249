"""What the role modules of payments share: the actors' names, the ledger accounts a
payment moves (Stripe clearing, a buyer's credit and receivable), announcing a payments
event, and the out-of-order signal of a webhook (``ProcessLater``). The habits every
module keeps are written at the top of ``payments/services.py``."""

from __future__ import annotations

from typing import Any

import stripe

from core.eventstore import NewEvent, event_append
from core.models import Organization
from ledger import services as ledger
from ledger.models import Account, Balance
from payments import events as pev

# The actors in payments/tasks.py, sent by name (core/queue.py).
STRIPE_EVENT_PROCESS_TASK = "stripe_event_process_task"
TOP_UP_SUBMIT_TASK = "top_up_submit_task"
INVOICE_PAYMENT_SUBMIT_TASK = "invoice_payment_submit_task"

ACTOR = "payments"


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
        expected_version=None,
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
