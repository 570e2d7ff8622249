"""The ledger's decisions, in memory: commands applied in order to the locked
balances and holds of a batch, with ``ledger.projection.apply_event`` (the rule a
replay uses) and ``BalanceState.breaks_limit``, collecting the event rows to write.
No database handle here: ``ledger.engine`` reads what the applier needs, runs it,
and writes exactly the rows it decided."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.db import RetryTransaction
from ledger import events as ev
from ledger.commands import (
    Command,
    EntryRequest,
    HoldPostRequest,
    HoldRequest,
    LedgerResult,
    rejected,
)
from ledger.models import Hold
from ledger.projection import BalanceState, apply_event


@dataclass(slots=True)
class HoldRow:
    pk: int | None
    hold_id: str
    debit_account: int
    credit_account: int
    currency: str
    amount_micros: int
    posted_micros: int
    state: str
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None = None
    changed: bool = False


class StaleSnapshot(RetryTransaction):
    """The one-statement read saw a lock released by a writer that committed after
    the statement's snapshot was taken: run the transaction again."""


class Applier:
    """Applies commands in order to in-memory balances and holds, collecting the
    event rows to write. Holds no database handle: it only decides."""

    def __init__(self, balances, holds, existing, now: datetime) -> None:
        self.balances: dict[int, BalanceState] = balances
        self.holds: dict[str, HoldRow] = holds
        self.existing: dict[tuple[str, int], tuple] = existing
        self.now = now
        self.rows: list[tuple[str, str, int, str, dict]] = []

    def _record(
        self, stream_type: str, stream_id: str, version: int, event_type: str, payload: dict
    ) -> LedgerResult:
        self.rows.append((stream_type, stream_id, version, event_type, payload))
        placeholder = -len(self.rows)
        self.existing[(stream_id, version)] = (event_type, payload, placeholder)
        return LedgerResult(status="posted", position=placeholder)

    def _accounts(self, ids: Sequence[int], currency: str) -> LedgerResult | None:
        for account_id in ids:
            state = self.balances.get(account_id)
            if state is None:
                return rejected(
                    "account_not_found",
                    f"account {account_id} does not exist",
                    account=account_id,
                )
            if state.currency != currency:
                return rejected(
                    "invalid",
                    f"account {account_id} is kept in {state.currency}, not {currency}",
                    account=account_id,
                )
        return None

    def _apply_checked(
        self, event_type: str, payload: dict, ids: Sequence[int]
    ) -> LedgerResult | None:
        """Apply to the balances; undo and reject if any account breaks its limit."""
        balances = self.balances
        touched = [balances[i] for i in ids]
        # Only an account with a limit can break one (BalanceState.breaks_limit).
        limited = [(s, s.available) for s in touched if s.overdraft_limit_micros is not None]
        if not limited:
            apply_event(balances, event_type, payload, 0)
            return None
        saved = [(s, s.counters(), s.dirty) for s in touched]
        apply_event(balances, event_type, payload, 0)
        for state, available in limited:
            if state.breaks_limit(available):
                after = state.available
                missing = -(after + (state.overdraft_limit_micros or 0))
                for undo, counters, was_dirty in saved:
                    (
                        undo.debits_posted,
                        undo.credits_posted,
                        undo.debits_pending,
                        undo.credits_pending,
                        undo.position,
                    ) = counters
                    undo.dirty = was_dirty
                return rejected(
                    "exceeds_limit",
                    f"account {state.account_id} has {available} micro-units available; "
                    f"this needs {available - after} ({missing} missing)",
                    account=state.account_id,
                    available_micros=available,
                    missing_micros=missing,
                )
        return None

    def run(self, command: Command) -> LedgerResult:
        if isinstance(command, EntryRequest):
            return self._entry(command)
        if isinstance(command, HoldRequest):
            return self._hold_create(command)
        if isinstance(command, HoldPostRequest):
            return self._hold_resolve(
                command.hold_id, ev.HOLD_POSTED, command.amount_micros, command.credit_legs
            )
        return self._hold_resolve(
            command.hold_id, ev.HOLD_EXPIRED if command.expired else ev.HOLD_VOIDED, None
        )

    def _entry(self, c: EntryRequest) -> LedgerResult:
        stream_id = ev.entry_stream_id(c.transfer_id)
        first = self.existing.get((stream_id, 1))
        if first is not None:
            _, stored, position = first
            same = (
                stored["currency"],
                stored["kind"],
                [list(leg) for leg in stored["legs"]],
                stored["description"],
            ) == (c.currency, c.kind, [list(leg) for leg in c.legs], c.description)
            if same:
                return LedgerResult(status="replayed", position=position)
            return rejected(
                "id_reused",
                f"transfer {c.transfer_id!r} exists with a different body",
                transfer_id=c.transfer_id,
            )
        ids = [leg[0] for leg in c.legs]
        if problem := self._accounts(ids, c.currency):
            return problem
        # The legs as the command holds them (validated: three items each), not
        # copied into lists: the event's JSON is the same, and a batch makes
        # thousands of these.
        payload = ev.entry_posted_payload(
            transfer_id=c.transfer_id,
            currency=c.currency,
            kind=c.kind,
            description=c.description,
            legs=c.legs,
        )
        if problem := self._apply_checked(ev.ENTRY_POSTED, payload, ids):
            return problem
        return self._record(ev.ENTRY_STREAM, stream_id, 1, ev.ENTRY_POSTED, payload)

    def _hold_create(self, c: HoldRequest) -> LedgerResult:
        stream_id = ev.hold_stream_id(c.hold_id)
        payload = ev.HoldCreated(
            hold_id=c.hold_id,
            currency=c.currency,
            debit_account=c.debit_account_id,
            credit_account=c.credit_account_id,
            amount_micros=c.amount_micros,
            expires_at=c.expires_at.isoformat(),
            description=c.description,
        ).payload()
        first = self.existing.get((stream_id, 1))
        if first is not None:
            _, stored, position = first
            keys = ("currency", "debit_account", "credit_account", "amount_micros")
            if all(stored[k] == payload[k] for k in keys):
                return LedgerResult(status="replayed", position=position)
            return rejected(
                "id_reused",
                f"hold {c.hold_id!r} exists with a different body",
                hold_id=c.hold_id,
            )
        ids = [c.debit_account_id, c.credit_account_id]
        if problem := self._accounts(ids, c.currency):
            return problem
        if problem := self._apply_checked(ev.HOLD_CREATED, payload, ids):
            return problem
        self.holds[c.hold_id] = HoldRow(
            pk=None,
            hold_id=c.hold_id,
            debit_account=c.debit_account_id,
            credit_account=c.credit_account_id,
            currency=c.currency,
            amount_micros=c.amount_micros,
            posted_micros=0,
            state=Hold.State.PENDING,
            expires_at=c.expires_at,
            created_at=self.now,
            changed=True,
        )
        return self._record(ev.HOLD_STREAM, stream_id, 1, ev.HOLD_CREATED, payload)

    def _hold_resolve(
        self,
        hold_id: str,
        event_type: str,
        amount: int | None,
        credit_legs: tuple[tuple[int, int], ...] | None = None,
    ) -> LedgerResult:
        stream_id = ev.hold_stream_id(hold_id)
        hold = self.holds.get(hold_id)
        if hold is None:
            return rejected("hold_not_found", f"hold {hold_id!r} does not exist", hold_id=hold_id)
        resolved = self.existing.get((stream_id, 2))
        if resolved is None and hold.state != Hold.State.PENDING:
            raise StaleSnapshot(hold_id)
        if resolved is not None or hold.state != Hold.State.PENDING:
            if resolved is not None:
                stored_type, stored, position = resolved
                posted = sum(leg[2] for leg in stored["legs"] if leg[1] == "D")
                wanted = hold.amount_micros if amount is None else amount
                if credit_legs is not None:
                    wanted = sum(leg[1] for leg in credit_legs)
                    credited = sorted((leg[0], leg[2]) for leg in stored["legs"] if leg[1] == "C")
                    if credited != sorted(tuple(leg) for leg in credit_legs):
                        wanted = -1  # the same hold posted to other accounts: not a replay
                if stored_type == event_type and (event_type != ev.HOLD_POSTED or posted == wanted):
                    return LedgerResult(status="replayed", position=position)
            return rejected(
                "hold_resolved",
                f"hold {hold_id!r} is already {hold.state}",
                hold_id=hold_id,
                state=hold.state,
            )
        if event_type == ev.HOLD_POSTED:
            if hold.expires_at <= self.now:
                return rejected(
                    "hold_expired",
                    f"hold {hold_id!r} expired at {hold.expires_at.isoformat()}",
                    hold_id=hold_id,
                )
            if credit_legs is not None:
                amount = sum(leg[1] for leg in credit_legs)
            amount = hold.amount_micros if amount is None else amount
            if amount > hold.amount_micros:
                return rejected(
                    "invalid",
                    f"amount_micros {amount} is more than the {hold.amount_micros} held",
                    hold_id=hold_id,
                )
            parts = credit_legs or ((hold.credit_account, amount),)
            if hold.debit_account in {leg[0] for leg in parts}:
                return rejected(
                    "invalid",
                    "credit_legs may not credit the hold's debit account",
                    hold_id=hold_id,
                )
            if problem := self._accounts([leg[0] for leg in parts], hold.currency):
                return problem
            legs: tuple[ev.Leg, ...] = (
                (hold.debit_account, "D", amount),
                *((account_id, "C", part) for account_id, part in parts),
            )
        else:
            amount = 0
            legs = ()
        payload = ev.HoldResolved(
            resolution=event_type,
            hold_id=hold_id,
            currency=hold.currency,
            debit_account=hold.debit_account,
            credit_account=hold.credit_account,
            released_micros=hold.amount_micros,
            legs=legs,
        ).payload()
        # Posting at most the held amount never lowers availability: no limit check.
        apply_event(self.balances, event_type, payload, 0)
        hold.state = {
            ev.HOLD_POSTED: Hold.State.POSTED,
            ev.HOLD_VOIDED: Hold.State.VOIDED,
            ev.HOLD_EXPIRED: Hold.State.EXPIRED,
        }[event_type]
        hold.posted_micros = amount
        hold.resolved_at = self.now
        hold.changed = True
        return self._record(ev.HOLD_STREAM, stream_id, 2, event_type, payload)
