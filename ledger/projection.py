"""The ledger's projection rules, shared by live writes and by replays.

``apply_event`` is the only place that turns a ledger event into balance
changes: services.py calls it while it writes, and ``replay`` calls it over the
whole event store. That is why a rebuild from position 0 gives identical balances.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from core.eventstore import RecordedEvent, events_iter
from ledger import events as ev


@dataclass(slots=True)
class BalanceState:
    account_id: int
    currency: str = ""
    normal_side: str = "D"
    overdraft_limit_micros: int | None = None
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    position: int = 0
    dirty: bool = field(default=False, compare=False)

    @property
    def posted(self) -> int:
        """Balance on the account's normal side."""
        if self.normal_side == "C":
            return self.credits_posted - self.debits_posted
        return self.debits_posted - self.credits_posted

    @property
    def available(self) -> int:
        """Posted minus what pending holds have reserved against it."""
        if self.normal_side == "C":
            return self.posted - self.debits_pending
        return self.posted - self.credits_pending

    def counters(self) -> tuple[int, int, int, int, int]:
        return (
            self.debits_posted,
            self.credits_posted,
            self.debits_pending,
            self.credits_pending,
            self.position,
        )

    def breaks_limit(self, available_before: int) -> bool:
        """True when this change took the account past its limit. A change that
        does not lower availability is always allowed (a limit may have been
        lowered under an account that is already past it)."""
        limit = self.overdraft_limit_micros
        if limit is None:
            return False
        after = self.available
        return after < -limit and after < available_before


def _post_legs(balances: dict[int, BalanceState], legs: Iterable, position: int) -> None:
    for account_id, side, amount in legs:
        state = balances[account_id]
        if side == "D":
            state.debits_posted += amount
        else:
            state.credits_posted += amount
        state.position = position
        state.dirty = True


def _pend(balances: dict[int, BalanceState], payload: dict, sign: int, position: int) -> None:
    amount = sign * (payload["amount_micros"] if sign > 0 else payload["released_micros"])
    debit = balances[payload["debit_account"]]
    credit = balances[payload["credit_account"]]
    debit.debits_pending += amount
    credit.credits_pending += amount
    debit.position = credit.position = position
    debit.dirty = credit.dirty = True


def apply_event(
    balances: dict[int, BalanceState], event_type: str, payload: dict, position: int
) -> None:
    if event_type == ev.ENTRY_POSTED:
        _post_legs(balances, payload["legs"], position)
    elif event_type == ev.HOLD_CREATED:
        _pend(balances, payload, +1, position)
    elif event_type in ev.HOLD_RESOLUTIONS:
        _pend(balances, payload, -1, position)
        _post_legs(balances, payload["legs"], position)
    else:
        raise ValueError(f"not a ledger event: {event_type}")


def accounts_in(event: RecordedEvent) -> set[int]:
    payload = event.payload
    found = {leg[0] for leg in payload.get("legs", ())}
    if "debit_account" in payload:
        found.update((payload["debit_account"], payload["credit_account"]))
    return found


def replay(recorded: Iterable[RecordedEvent] | None = None) -> dict[int, BalanceState]:
    """Balances computed from nothing but the ledger's events, from position 0."""
    if recorded is None:
        recorded = events_iter(stream_types=(ev.ENTRY_STREAM, ev.HOLD_STREAM))
    balances: dict[int, BalanceState] = {}
    for event in recorded:
        for account_id in accounts_in(event):
            if account_id not in balances:
                balances[account_id] = BalanceState(account_id=account_id)
        apply_event(balances, event.type, event.payload, event.position)
    return balances
