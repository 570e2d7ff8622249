"""The journal as the exports read it: postings with each one's entry reference and
kind, in the order they were written, a chunk at a time (keyset on the posting id)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q
from django.db.models.fields.json import KeyTextTransform

from exports.frames import CHUNK_ROWS
from ledger.models import Account, Posting

# --- the journal, read with each posting's entry reference -------------------------


@dataclass(frozen=True, slots=True)
class Line:
    position: int
    account_id: int
    side: str
    amount_micros: int
    currency: str
    recorded_at: datetime
    ref: str  # the transfer id, or ``hold:<hold id>`` for a settled hold
    kind: str  # the entry's kind (usage, grant, top_up, …); "hold" for holds

    @property
    def signed_credit(self) -> int:
        return self.amount_micros if self.side == Account.Side.CREDIT else -self.amount_micros


def journal_chunks(
    accounts: Q,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    size: int | None = None,
) -> Iterator[list[Line]]:
    """Postings on the accounts matching ``accounts`` in ``[since, until)``, in the
    order they were written, each with its entry's reference and kind (one join, no
    query per row), ``size`` at a time: one short query per chunk (keyset on the
    posting id), so neither a long transaction nor the whole journal in memory."""
    size = size or CHUNK_ROWS
    postings = Posting.objects.filter(account__in=Account.objects.filter(accounts))
    if since is not None:
        postings = postings.filter(recorded_at__gte=since)
    if until is not None:
        postings = postings.filter(recorded_at__lt=until)
    after = 0
    while True:
        rows = list(
            postings.filter(id__gt=after)
            .order_by("id")
            .values_list(
                "id",
                "entry_id",
                "account_id",
                "side",
                "amount_micros",
                "currency",
                "recorded_at",
                KeyTextTransform("transfer_id", "entry__payload"),
                KeyTextTransform("hold_id", "entry__payload"),
                KeyTextTransform("kind", "entry__payload"),
            )[:size]
        )
        if not rows:
            return
        after = rows[-1][0]
        yield [
            Line(p, a, s, x, c, at, t or f"hold:{h}", k or "hold")
            for _, p, a, s, x, c, at, t, h, k in rows
        ]


def journal(
    accounts: Q, *, since: datetime | None = None, until: datetime | None = None
) -> list[Line]:
    """All of ``journal_chunks`` in one list."""
    return [line for chunk in journal_chunks(accounts, since=since, until=until) for line in chunk]


def _lease_subject(ref: str) -> str:
    """``hold:<lease>:w<n>`` → the lease's usage subject."""
    return ref.removeprefix("hold:").rsplit(":w", 1)[0]
