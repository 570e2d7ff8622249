"""Auto-recharge's setting and its check: a buyer's threshold, amount and daily cap,
and the top-up fired when available credit falls below the threshold (once per
crossing). The follower that runs the check on each ledger event is
``payments/recharge.py``."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from django.db.models import Sum

from core.db import retry_transaction
from core.errors import InvalidInput
from core.models import Organization
from core.queue import task_send_on_commit
from ledger.models import Account, Balance
from ledger.selectors import BalanceState, apply_event
from payments import events as pev
from payments.common import TOP_UP_SUBMIT_TASK, _account, _announce
from payments.models import AutoRecharge, StripeCustomer, TopUp
from payments.top_ups import top_up_check_amount

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
