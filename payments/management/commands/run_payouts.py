"""Pay providers their net payable (scheduled, e.g. daily from cron)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from core.money import Money, MoneyError
from payments import services
from payments.stripe_client import PaymentsUnavailable


class Command(BaseCommand):
    help = (
        "Transfer each onboarded provider's net payable above the minimum to its Stripe "
        "connected account. Idempotent and restartable: re-running after a crash pays "
        "nobody twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--minimum", help="decimal amount, default PAYOUT_MINIMUM")
        parser.add_argument("--currency", help="default TANDEM_CURRENCY")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        currency = options["currency"] or settings.TANDEM_CURRENCY
        minimum = None
        if options["minimum"]:
            try:
                minimum = Money.parse(options["minimum"], currency).amount_micros
            except MoneyError as exc:
                self.stderr.write(f"--minimum: {exc}")
                raise SystemExit(2) from None
        try:
            run = services.payouts_run(minimum_micros=minimum, currency=currency)
        except PaymentsUnavailable as exc:
            self.stderr.write(exc.message)
            raise SystemExit(3) from None
        self.stdout.write(
            f"payouts: {len(run.paid)} paid, {len(run.failed)} failed, {len(run.retry)} to retry"
        )
