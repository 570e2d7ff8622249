"""Daily reconciliation of the ledger's Stripe clearing account with Stripe.

For one UTC day ``[00:00, 24:00)`` it sums, per Stripe object, the clearing
account's journal lines (debits in, credits out) and Stripe's balance transactions
(gross ``amount``: charges in, refunds, transfers and dispute withdrawals out), and
records every object where the two differ:

- ``missing_in_stripe``: the ledger moved money Stripe has no record of that day;
- ``missing_in_ledger``: Stripe moved money the ledger does not know of (a charge
  that is not a Tandem top-up, a refund whose webhook never came);
- ``amount_mismatch``: both know it, with different amounts.

Journal entries name their Stripe object through our rows (``topup:<id>`` → the
top-up's charge, ``refund:<id>`` → the refund, ``payout:<id>`` → the transfer,
``invoice:<key>:paid`` and ``invoice-payment:<id>:excess`` → the charge of the
collection attempt that paid the invoice, ``invoice-refund:<id>`` → its refund) or
directly (``refund:re_…``, ``dispute:dp_…``, ``payout-reversal:trr_…``). Stripe's
processing fees are not booked by the ledger and are not compared (gross amounts).
A payment made just before midnight whose balance transaction falls after it shows
on both days as a difference that the next day's run explains.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce
from django.utils import timezone

from ledger.models import Account, Posting
from ledger.services import platform_account
from payments.models import (
    InvoicePayment,
    InvoiceRefund,
    Payout,
    ReconciliationDifference,
    ReconciliationRun,
    Refund,
    TopUp,
)
from payments.stripe_client import (
    as_dict,
    from_minor,
    ledger_currency,
    object_id,
    stripe_client,
)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _ledger_side(day: date, currency: str) -> tuple[dict[str, int], dict[str, list[str]]]:
    start, end = day_bounds(day)
    clearing = platform_account(kind=Account.Kind.STRIPE_CLEARING, currency=currency)
    lines = (
        Posting.objects.filter(account=clearing, recorded_at__gte=start, recorded_at__lt=end)
        .annotate(
            ref=Coalesce(
                KeyTextTransform("transfer_id", "entry__payload"),
                KeyTextTransform("hold_id", "entry__payload"),
            )
        )
        .values_list("ref", "side", "amount_micros")
    )
    by_ref: dict[str, int] = defaultdict(int)
    for ref, side, amount in lines:
        by_ref[ref or ""] += amount if side == Account.Side.DEBIT else -amount
    sources = _sources(list(by_ref))
    amounts: dict[str, int] = defaultdict(int)
    refs: dict[str, list[str]] = defaultdict(list)
    for ref, amount in by_ref.items():
        source = sources.get(ref) or f"ledger:{ref}"
        amounts[source] += amount
        refs[source].append(ref)
    return amounts, refs


def _sources(refs: list[str]) -> dict[str, str]:
    """Journal reference → the Stripe object id it mirrors."""
    found: dict[str, str] = {}
    ids: dict[str, dict[int, str]] = {"topup": {}, "refund": {}, "payout": {}}
    for ref in refs:
        kind, _, rest = ref.partition(":")
        if kind in ("dispute", "dispute-won", "payout-reversal") or (
            kind == "refund" and not rest.isdigit()
        ):
            found[ref] = rest
        elif kind in ids and rest.isdigit():
            ids[kind][int(rest)] = ref
    invoice_keys = {
        ref[len("invoice:") : -len(":paid")]: ref
        for ref in refs
        if ref.startswith("invoice:") and ref.endswith(":paid")
    }
    excess = {
        int(ref.split(":")[1]): ref
        for ref in refs
        if ref.startswith("invoice-payment:") and ref.split(":")[1].isdigit()
    }
    paid_by = InvoicePayment.objects.filter(status=InvoicePayment.Status.SUCCEEDED).filter(
        Q(invoice__key__in=invoice_keys, payment_intent_id=F("invoice__payment_reference"))
        | Q(pk__in=excess)
    )
    for pk, key, charge, intent in paid_by.values_list(
        "pk", "invoice__key", "charge_id", "payment_intent_id"
    ):
        if pk in excess:
            found[excess[pk]] = charge or intent or ""
        if key in invoice_keys:
            found[invoice_keys[key]] = charge or intent or ""
    invoice_refunds = {
        int(ref.split(":")[1]): ref
        for ref in refs
        if ref.startswith("invoice-refund:") and ref.split(":")[1].isdigit()
    }
    for pk, refund_id in InvoiceRefund.objects.filter(pk__in=invoice_refunds).values_list(
        "pk", "stripe_refund_id"
    ):
        found[invoice_refunds[pk]] = refund_id or ""
    for pk, charge, intent in TopUp.objects.filter(pk__in=ids["topup"]).values_list(
        "pk", "charge_id", "payment_intent_id"
    ):
        found[ids["topup"][pk]] = charge or intent or ""
    for pk, refund_id in Refund.objects.filter(pk__in=ids["refund"]).values_list(
        "pk", "stripe_refund_id"
    ):
        found[ids["refund"][pk]] = refund_id or ""
    for pk, transfer_id in Payout.objects.filter(pk__in=ids["payout"]).values_list(
        "pk", "transfer_id"
    ):
        found[ids["payout"][pk]] = transfer_id or ""
    return {ref: source for ref, source in found.items() if source}


def _stripe_side(day: date, currency: str) -> tuple[dict[str, int], dict[str, list[str]]]:
    start, end = day_bounds(day)
    first, last = int(start.timestamp()), int(end.timestamp())
    amounts: dict[str, int] = defaultdict(int)
    txns: dict[str, list[str]] = defaultdict(list)
    # Newest first (Stripe's order): stop at the first one older than the day.
    listing = stripe_client().v1.balance_transactions.list(params={"limit": 100})
    for txn in listing.auto_paging_iter():
        created = int(txn.created)
        if created < first:
            break
        if created >= last or ledger_currency(txn.currency) != currency:
            continue
        source = object_id(as_dict(txn).get("source")) or f"stripe:{txn.id}"
        amounts[source] += from_minor(int(txn.amount), currency)
        txns[source].append(txn.id)
    return amounts, txns


def reconciliation_run(*, day: date, currency: str) -> ReconciliationRun:
    """Compare one day and record the differences (a re-run replaces the day's)."""
    ledger, refs = _ledger_side(day, currency)
    stripe, txns = _stripe_side(day, currency)  # Stripe I/O before the transaction
    with transaction.atomic():
        run, _ = ReconciliationRun.objects.select_for_update().update_or_create(
            day=day,
            currency=currency,
            defaults={
                "ledger_micros": sum(ledger.values()),
                "stripe_micros": sum(stripe.values()),
                "ran_at": timezone.now(),
                "matched": 0,
            },
        )
        run.differences.all().delete()
        matched = 0
        differences = []
        for source in sorted(set(ledger) | set(stripe)):
            in_ledger, in_stripe = ledger.get(source), stripe.get(source)
            if in_ledger == in_stripe:
                matched += 1
                continue
            if in_stripe is None:
                kind = ReconciliationDifference.Kind.MISSING_IN_STRIPE
            elif in_ledger is None:
                kind = ReconciliationDifference.Kind.MISSING_IN_LEDGER
            else:
                kind = ReconciliationDifference.Kind.AMOUNT_MISMATCH
            differences.append(
                ReconciliationDifference(
                    run=run,
                    kind=kind,
                    source_id=source,
                    ledger_micros=in_ledger or 0,
                    stripe_micros=in_stripe or 0,
                    transfer_ids=refs.get(source, []),
                    balance_transactions=txns.get(source, []),
                )
            )
        ReconciliationDifference.objects.bulk_create(differences)
        ReconciliationRun.objects.filter(pk=run.pk).update(matched=matched)
        run.refresh_from_db()
    return run
