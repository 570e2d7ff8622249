"""``manage.py rebuild_balances``: recompute every balance from the journal's events
and say how many rows the live projection had wrong (0 is the healthy answer)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ledger import services


class Command(BaseCommand):
    help = "Rebuild account balances by replaying the ledger's events from position 0."

    def handle(self, *args: Any, **options: Any) -> None:
        changed = services.balances_rebuild()
        if changed:
            self.stdout.write(
                self.style.WARNING(f"Rebuilt balances: {changed} row(s) differed and were fixed.")
            )
        else:
            self.stdout.write("Rebuilt balances: 0 rows differed.")
