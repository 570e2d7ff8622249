from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from core import followers


class Command(BaseCommand):
    help = "Follow the event store: run every registered follower (or the named ones)."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", help="followers to run (default: all)")
        parser.add_argument("--once", action="store_true", help="run until idle, then exit")
        parser.add_argument("--interval", type=float, default=0.5, help="poll seconds")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="events per transaction (default: each follower's own)",
        )

    def handle(self, *args, names, once, interval, batch_size, **options):
        known = {f.name: f for f in followers.registered()}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise CommandError(
                f"unknown follower(s): {', '.join(unknown)}; known: {', '.join(known) or 'none'}"
            )
        chosen = [known[name] for name in names] if names else list(known.values())
        # Each follower's tracking position as last read: while nothing new has come
        # for it, a poll is one cheap read instead of a transaction.
        positions: dict[str, int] = {}
        while True:
            processed = 0
            for follower in chosen:
                known_position = positions.get(follower.name)
                if known_position is not None and not followers.follower_behind(
                    follower, known_position
                ):
                    continue
                processed += followers.followers_run_until_idle([follower], batch_size=batch_size)
                positions[follower.name] = followers.follower_position(follower.name)
            if processed:
                self.stdout.write(f"processed {processed} events")
            if once:
                return
            time.sleep(interval)
