"""``manage.py close_period --period 2026-10 [--finalize | --no-finalize] [--now ISO]``:
close a month for every buyer charged in it (invoicing.month_close.period_close).

Drafts are refreshed from the journal; once the month's grace days have passed (or
with ``--finalize``) they are finalized and the providers' statements written.
Running it again changes nothing already final, so a run that stopped half way is
finished by running it again."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from core.errors import ApplicationError
from invoicing.month_close import period_close
from invoicing.periods import parse_period

_MONTH = re.compile(r"^\d{4}-\d{2}$")


class Command(BaseCommand):
    help = "Close a month: refresh (and, after the grace days, finalize) every buyer's invoice."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="the month, as YYYY-MM")
        parser.add_argument(
            "--finalize",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="finalize now (the month must have ended) or only refresh the drafts "
            "(--no-finalize); default: finalize once the grace days have passed",
        )
        parser.add_argument(
            "--now",
            help="the time to close at, ISO 8601 with a time zone (default: now)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        text = options["period"]
        if not _MONTH.match(text):
            raise CommandError(f"--period must be a month as YYYY-MM (e.g. 2026-10), not {text!r}")
        try:
            period = parse_period(text)
        except ApplicationError as exc:
            raise CommandError(f"--period: {exc.message}") from None
        now = _parse_now(options["now"])
        try:
            result = period_close(
                period=period, finalize=options["finalize"], now=now, actor="cli:close_period"
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Closed {result.period:%Y-%m}:")
        self.stdout.write(f"  organizations charged: {result.organizations}")
        self.stdout.write(f"  invoices finalized:    {result.finalized}")
        self.stdout.write(f"  already final:         {result.already_final}")
        self.stdout.write(f"  drafts refreshed:      {result.drafts}")
        self.stdout.write(f"  provider statements:   {result.statements}")
        self.stdout.write(f"  seconds:               {result.seconds:.2f}")


def _parse_now(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = parse_datetime(text)
    except ValueError:
        value = None
    if value is None:
        raise CommandError(f"--now must be an ISO 8601 date and time, not {text!r}")
    if value.tzinfo is None:
        raise CommandError("--now must carry a time zone (Z or +00:00)")
    return value.astimezone(UTC)
