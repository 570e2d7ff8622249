"""Collect due invoice payments (scheduled, e.g. hourly from cron)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils.dateparse import parse_datetime

from payments.services import invoice_dunning_run
from payments.stripe_client import PaymentsUnavailable


class Command(BaseCommand):
    help = (
        "Run the dunning: charge the saved payment method for invoices whose retry is "
        "due (settings.DUNNING_RETRY_DAYS), send again attempts a crash left unsent, "
        "and re-read PaymentIntents whose webhook is late. Idempotent and restartable: "
        "each retry is claimed once, and each attempt charges once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--now",
            help="run as of this time (ISO 8601 with a time zone), to replay a missed run",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        now: datetime | None = None
        if options["now"]:
            now = parse_datetime(options["now"])
            if now is None or now.tzinfo is None:
                self.stderr.write("--now must be an ISO 8601 time with a time zone")
                raise SystemExit(2)
        try:
            run = invoice_dunning_run(now=now)
        except PaymentsUnavailable as exc:
            self.stderr.write(exc.message)
            raise SystemExit(3) from None
        self.stdout.write(
            f"dunning: {len(run.started)} retries started, {len(run.resent)} resent, "
            f"{len(run.refreshed)} re-read from Stripe, {len(run.errors)} left for the next run"
        )
