"""``manage.py run_matching [--once]``: the matching loop.

Each pass follows the supply side's events (node failures, forced withdrawals), then
runs one matching round (expire orders, move leases along in time, match), then stops
inference deployments idle past their timeout (ending their leases), expires batches
past their window and restarts batch runners that died, and ends node
assignments whose claim ran out (marketplace.assignments.services.assignments_reap). Safe to
run on several machines at once: rounds take turns on an advisory lock, and the
database refuses a double allocation whatever happens. Dramatiq's ``match_orders``
actor runs the same round when an order is placed or an offer listed.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from core.followers import follower_run_once
from marketplace import services
from marketplace.assignments import services as assignments
from marketplace.followers import supply_follower
from marketplace.workloads import batches, dedicated, inference


class Command(BaseCommand):
    help = (
        "Run matching rounds: follow supply events, expire, tick leases, match, "
        "stop idle inference deployments."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument(
            "--interval",
            type=float,
            default=float(settings.MARKETPLACE_MATCHING_INTERVAL_SECONDS),
            help="seconds between passes",
        )

    def handle(self, *args: Any, once: bool, interval: float, **options: Any) -> None:
        while True:
            while follower_run_once(supply_follower):
                pass
            result = services.matching_round()
            if result.allocations or result.preemptions or result.expired:
                self.stdout.write(
                    f"matched {result.allocations} of {result.orders_considered} orders "
                    f"({len(result.leases)} leases), {result.preemptions} preemptions, "
                    f"{result.expired} expired"
                )
            # Claims whose node stopped renewing: their runs fail (one indexed read when none).
            reaped = assignments.assignments_reap()
            if reaped:
                self.stdout.write(f"ended {reaped} assignment(s) whose node stopped renewing")
            # Cheap: the live deployments are at most one per model.
            stopped = inference.deployments_stop_idle()
            if stopped:
                self.stdout.write(f"stopped {stopped} idle inference deployment(s)")
            # Dedicated endpoints: replicas ready, inactive timeouts, replicas placed/ended.
            changed = dedicated.dedicated_tick()
            if changed:
                self.stdout.write(f"placed or ended {changed} dedicated endpoint replica(s)")
            # Batches past their window expire; a batch whose runner died gets another.
            batches.batches_tick()
            if once:
                return
            time.sleep(interval)
