"""Demo payments for ``make run``: the demo buyer's $50.00 top-up and the demo
provider's connected account, both through the webhook path a real Stripe
delivery takes.

On the embedded default there is no Stripe: the top-up's ``payment_intent.succeeded``
and the account's ``account.updated`` are signed here with a local secret and
handed to the same verification, storage and processing as a delivery from Stripe
(no shortcut around it). With ``STRIPE_SECRET_KEY`` set, the connected account is
created at Stripe and the provider is paid through ``run_payouts`` if its payable
is above the minimum. Safe to run again: event ids and request keys are fixed.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import stripe
from django.conf import settings

from core.models import Organization
from payments import services
from payments.models import ConnectedAccount, TopUp
from payments.stripe_client import stripe_configured
from payments.webhooks import stripe_event_process, stripe_event_receive

TOP_UP_MICROS = 50_000_000


def _deliver(event: dict[str, Any]) -> None:
    secret = settings.STRIPE_WEBHOOK_SECRET or f"whsec_demo_{secrets.token_hex(16)}"
    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, secret)
    row, _ = stripe_event_receive(payload=body.encode(), signature=header, secret=secret)
    stripe_event_process(event_id=row.event_id)


def _event(event_id: str, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }


def load(*, buyer: Organization, provider: Organization) -> dict[str, Any]:
    """Returns what it made: ``{"top_up": id, "connected_account": id, "payouts": [...]}``."""
    currency = settings.TANDEM_CURRENCY
    top_up = services.top_up_record(
        organization=buyer,
        amount_micros=TOP_UP_MICROS,
        currency=currency,
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key="demo:top-up",
    )
    intent_id = f"pi_demo_{top_up.pk}"
    if not top_up.payment_intent_id:
        services.top_up_mark(
            top_up_id=top_up.pk,
            status=TopUp.Status.REQUIRES_PAYMENT,
            payment_intent_id=intent_id,
        )
    cents = TOP_UP_MICROS // 10_000
    _deliver(
        _event(
            f"evt_demo_top_up_{top_up.pk}",
            "payment_intent.succeeded",
            {
                "id": intent_id,
                "object": "payment_intent",
                "amount": cents,
                "amount_received": cents,
                "currency": currency.lower(),
                "status": "succeeded",
                "latest_charge": f"ch_demo_{top_up.pk}",
                "metadata": {"tandem_top_up": str(top_up.pk)},
            },
        )
    )

    payouts: list[int] = []
    if stripe_configured():
        account = services.connected_account_create(organization=provider)
        payouts = services.payouts_run().paid
    else:
        account = services.connected_account_record(
            organization=provider,
            account_id=f"acct_demo_{provider.pk}",
            country=settings.STRIPE_CONNECT_DEFAULT_COUNTRY,
        )
        _deliver(
            _event(
                f"evt_demo_account_{provider.pk}",
                "account.updated",
                {
                    "id": account.account_id,
                    "object": "account",
                    "type": "express",
                    "details_submitted": True,
                    "charges_enabled": True,
                    "payouts_enabled": True,
                    "requirements": {"currently_due": []},
                },
            )
        )
    account = ConnectedAccount.objects.get(pk=account.pk)
    return {"top_up": top_up.pk, "connected_account": account.account_id, "payouts": payouts}
