"""``manage.py sweep_holds``: release every pending hold whose time has run out."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ledger import services


class Command(BaseCommand):
    help = "Expire pending holds past their timeout, giving the reserved credit back."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="holds released per transaction"
        )

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        total = 0
        while True:
            released = services.holds_expire(limit=batch_size)
            total += released
            # A short batch means nothing more was due (or the rest resolved meanwhile).
            if released < batch_size:
                break
        self.stdout.write(f"Released {total} expired hold(s).")
