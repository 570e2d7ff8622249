"""Gap-free invoice numbers (``INV-000123``), one sequence per series, taken under the
sequence row's lock; a batch takes a run of numbers at once."""

from __future__ import annotations

from invoicing.models import (
    DocumentSequence,
)
from invoicing.periods import issuer

# --- finalization -------------------------------------------------------------------


def _next_number(series: str) -> str:
    return _next_numbers(series, 1)[0]


def _next_numbers(series: str, count: int) -> list[str]:
    """The next ``count`` numbers of a series, taken under the sequence row's lock."""
    name = issuer()
    DocumentSequence.objects.get_or_create(issuer=name, series=series)
    sequence = DocumentSequence.objects.select_for_update().get(issuer=name, series=series)
    first = sequence.last_number + 1
    sequence.last_number += count
    sequence.save(update_fields=["last_number"])
    return _numbers(series, first, count)


def _numbers(series: str, first: int, count: int) -> list[str]:
    name = issuer()
    prefix = name if series == "INV" else f"{name}-{series}"
    return [f"{prefix}-{n:06d}" for n in range(first, first + count)]


def _number_last(series: str) -> int:
    """The last number of a series handed out, as this transaction sees it (no lock)."""
    found = DocumentSequence.objects.filter(issuer=issuer(), series=series).values_list(
        "last_number", flat=True
    )
    return next(iter(found), 0)


class _NumbersTaken(Exception):
    """The numbers a chunk of a close predicted were not the next ones when it
    came to take them: another finalization took some meanwhile."""


def _numbers_confirm(series: str, first: int, count: int) -> None:
    """Take the ``count`` numbers from ``first`` on, under the sequence row's lock
    (held to the commit), if they are the next ones; else ``_NumbersTaken``."""
    if not count:
        return
    name = issuer()
    DocumentSequence.objects.get_or_create(issuer=name, series=series)
    updated = DocumentSequence.objects.filter(
        issuer=name, series=series, last_number=first - 1
    ).update(last_number=first - 1 + count)
    if not updated:
        raise _NumbersTaken(f"{series} numbers from {first} on were taken meanwhile")
