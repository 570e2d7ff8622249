"""Reconcile a day of the Stripe clearing account with Stripe (daily, from cron)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date

from payments.reconciliation import reconciliation_run
from payments.stripe_client import PaymentsUnavailable


class Command(BaseCommand):
    help = "Compare the ledger's Stripe clearing account with Stripe's balance transactions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--day", help="YYYY-MM-DD (UTC); default yesterday")
        parser.add_argument("--currency", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        day = parse_date(options["day"]) if options["day"] else None
        if options["day"] and day is None:
            self.stderr.write("--day must be YYYY-MM-DD")
            raise SystemExit(2)
        day = day or (timezone.now() - timedelta(days=1)).date()
        currency = options["currency"] or settings.TANDEM_CURRENCY
        try:
            run = reconciliation_run(day=day, currency=currency)
        except PaymentsUnavailable as exc:
            self.stderr.write(exc.message)
            raise SystemExit(3) from None
        differences = list(run.differences.all())
        self.stdout.write(
            f"{day} {currency}: ledger {run.ledger_micros}, Stripe {run.stripe_micros}, "
            f"{run.matched} matched, {len(differences)} differences"
        )
        for d in differences:
            self.stdout.write(
                f"  {d.kind:18} {d.source_id:32} ledger {d.ledger_micros} stripe {d.stripe_micros}"
            )
