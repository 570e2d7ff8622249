"""Process stored Stripe events a worker has not (a crash, a long outage)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from payments.services import top_ups_resume
from payments.webhooks import stripe_events_process_pending


class Command(BaseCommand):
    help = "Apply stored Stripe webhook events still unprocessed, and resend stalled top-ups."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="keep sweeping every --every s")
        parser.add_argument("--every", type=float, default=30.0)

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            done, failed = stripe_events_process_pending()
            resent = top_ups_resume()
            self.stdout.write(
                f"events: {done} processed, {failed} failed; top-ups resent: {resent}"
            )
            if not options["loop"]:
                return
            time.sleep(options["every"])
