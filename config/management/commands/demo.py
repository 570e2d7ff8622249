"""Load the demo that `make run` serves: an operator, a provider, a buyer with
credits, money moving through the ledger, and API keys to try it with.

Safe to run again: organizations and ledger entries are created once (their
transfer ids are fixed, so the ledger replays them); new API keys are printed
each run because a key is only ever shown once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from billing import services as billing
from billing.models import Account
from core import services as core
from core.models import Organization
from metering import demo as usage
from providers import demo as supply

OPERATOR = "Tandem Operations"
PROVIDER = "Northlake Research Computing"
BUYER = "Acme AI"
CURRENCY = "USD"


def _org(name: str, kind: str, *, is_operator: bool = False) -> Organization:
    found = Organization.objects.filter(name=name).first()
    return found or core.org_create(name=name, kind=kind, is_operator=is_operator)


class Command(BaseCommand):
    help = "Load demo organizations, credits and ledger activity (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            operator = _org(OPERATOR, "both", is_operator=True)
            provider = _org(PROVIDER, "provider")
            buyer = _org(BUYER, "buyer")

        # A site, a node of 8x H100 registered from an inventory file, two offers.
        supply.load(provider=provider)

        # $25.00 of free credits for the new buyer, from the promo account.
        billing.credits_grant(
            organization=buyer,
            amount_micros=25_000_000,
            currency=CURRENCY,
            reason="welcome credits",
            transfer_id="demo:welcome-credits",
        )
        credit = billing.account_open(
            organization=buyer, kind=Account.Kind.CREDIT, currency=CURRENCY
        )
        payable = billing.account_open(
            organization=provider, kind=Account.Kind.PAYABLE, currency=CURRENCY
        )
        fees = billing.platform_account(kind=Account.Kind.FEES, currency=CURRENCY)
        revenue = billing.platform_account(kind=Account.Kind.REVENUE, currency=CURRENCY)

        # A GPU lease: reserve its maximum cost, then settle what was used —
        # $3.60 to the provider, a 10% platform fee — and release the rest.
        billing.hold_create(
            hold_id="demo:lease-1",
            debit_account_id=credit.pk,
            credit_account_id=payable.pk,
            amount_micros=8_000_000,
            currency=CURRENCY,
            timeout=timedelta(days=30),
            description="lease reservation: 1x H100 for up to 2 hours",
            actor="demo",
        )
        billing.hold_post(hold_id="demo:lease-1", amount_micros=3_600_000, actor="demo")
        billing.transfer_create(
            transfer_id="demo:lease-1:fee",
            debit_account_id=credit.pk,
            credit_account_id=fees.pk,
            amount_micros=360_000,
            currency=CURRENCY,
            kind="fee",
            description="platform fee on lease-1",
            actor="demo",
        )
        # Tokens from a fine-tune job, rated into revenue.
        billing.transfer_create(
            transfer_id="demo:finetune-1",
            debit_account_id=credit.pk,
            credit_account_id=revenue.pk,
            amount_micros=5_000_000,
            currency=CURRENCY,
            kind="usage",
            description="fine-tune job ft-demo: 1.2M training tokens",
            actor="demo",
        )
        # A second reservation still pending: it shows in "available".
        billing.hold_create(
            hold_id="demo:lease-2",
            debit_account_id=credit.pk,
            credit_account_id=payable.pk,
            amount_micros=2_000_000,
            currency=CURRENCY,
            timeout=timedelta(days=30),
            description="lease reservation: 1x L40S for up to 1 hour",
            actor="demo",
        )

        # Usage from the runtime and a lease (tokens, GPU-seconds), rated into the ledger.
        usage.load(buyer=buyer, provider=provider)

        keys = [
            (buyer, "admin", "buyer admin"),
            (provider, "admin", "provider admin"),
            (operator, "finance", "operator finance"),
        ]
        self.stdout.write(self.style.SUCCESS("Demo data loaded."))
        self.stdout.write("API keys (shown once; new ones each run):")
        for org, role, label in keys:
            created = core.api_key_create(organization=org, name=f"demo {label}", role=role)
            self.stdout.write(f"  {label:18} {org.name:32} {created.raw_key}")
        self.stdout.write(
            "Try: curl -H 'Authorization: Bearer <buyer admin key>' "
            "http://127.0.0.1:8000/api/v1/accounts/"
        )
