"""``python manage.py run_node_monitor [--every SECONDS] [--once]``

Marks nodes whose heartbeats stopped unhealthy (one NodeHealthChanged each), refreshes
reliability scores every few minutes, prunes telemetry past its retention. Safe to
run more than one: each health change is claimed with a conditional update.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from providers import services
from providers.models import Node

RELIABILITY_EVERY_SECONDS = 300


class Command(BaseCommand):
    help = "Sweep node health, refresh reliability scores, prune old telemetry."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=10.0)
        parser.add_argument("--once", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        # The first pass always refreshes: the monotonic clock starts at boot, so a
        # young machine's clock can read less than the refresh interval.
        last_refresh: float | None = None
        while True:
            changed = services.node_health_sweep()
            if changed:
                self.stdout.write(f"unhealthy now: nodes {changed}")
            if last_refresh is None or time.monotonic() - last_refresh >= RELIABILITY_EVERY_SECONDS:
                for node in Node.objects.order_by("pk"):
                    services.node_reliability_refresh(node=node)
                services.telemetry_prune()
                last_refresh = time.monotonic()
            if options["once"]:
                return
            time.sleep(options["every"])
