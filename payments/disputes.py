"""Disputes of top-up charges: funds Stripe withdraws are clawed back from the buyer,
and put back if the dispute is won."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from core.db import retry_transaction
from ledger import services as ledger
from ledger.models import Account
from payments import events as pev
from payments.common import ACTOR, ProcessLater, _account, _announce, _clearing
from payments.models import Dispute, TopUp
from payments.refunds import top_up_claw_back
from payments.stripe_client import from_minor, ledger_currency, object_id
from payments.top_ups import _find_top_up


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
