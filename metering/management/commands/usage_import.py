"""Record usage events from a JSON-lines file as the platform (backfills, replays of a
runtime's spool). Restartable: with ``--checkpoint``, the number of lines recorded is
written after each committed batch, and a restart goes on from there; a batch that
committed before a crash, but not its checkpoint, is sent again and answered as
duplicates, so every event is stored once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec
from django.core.management.base import BaseCommand, CommandError

from metering.schema import UsageEventIn
from metering.services import usage_record


class Command(BaseCommand):
    help = "Record usage events from a JSON-lines file (restartable with --checkpoint)."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--checkpoint", type=Path, default=None)
        parser.add_argument(
            "--pause",
            type=float,
            default=0.0,
            help="seconds between batches, to pace a backfill beside live traffic",
        )

    def handle(
        self, *args, path: Path, batch_size: int, checkpoint: Path | None, pause: float, **options
    ):
        if not 1 <= batch_size <= 1000:
            raise CommandError("--batch-size must be from 1 to 1000")
        lines = path.read_bytes().splitlines()
        done = int(checkpoint.read_text() or 0) if checkpoint and checkpoint.exists() else 0
        decoder = msgspec.json.Decoder(UsageEventIn)
        counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        while done < len(lines):
            chunk = lines[done : done + batch_size]
            try:
                events = [decoder.decode(line) for line in chunk]
            except msgspec.ValidationError as exc:
                raise CommandError(f"line {done + 1}..{done + len(chunk)}: {exc}") from None
            for outcome in usage_record(events=events):
                counts[outcome.status] += 1
            done += len(chunk)
            if checkpoint is not None:
                temporary = checkpoint.with_suffix(".tmp")
                temporary.write_text(str(done))
                os.replace(temporary, checkpoint)
            if pause:
                time.sleep(pause)
        self.stdout.write(
            f"recorded {done} lines: {counts['accepted']} accepted, "
            f"{counts['duplicate']} duplicate, {counts['rejected']} rejected"
        )
