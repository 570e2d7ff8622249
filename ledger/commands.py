"""Ledger commands, their results, and the checks a command passes before any
database work (``validate``): what a caller of ``ledger.engine.ledger_execute``
sends and gets back. ``ledger.engine`` re-exports every public name here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.errors import (
    ApplicationError,
    Conflict,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
)
from core.money import CURRENCIES, MAX_AMOUNT_MICROS
from ledger import events as ev

TRANSFER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._/@+-]{0,199}$")
MAX_HOLD_TIMEOUT = timedelta(days=366)
MAX_LEGS = 64

# --- commands and results ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryRequest:
    """A journal entry: two or more legs ``(account_id, "D"|"C", amount_micros)``
    whose debits equal their credits, all in ``currency``."""

    transfer_id: str
    currency: str
    legs: tuple[ev.Leg, ...]
    kind: str = "transfer"
    description: str = ""


@dataclass(frozen=True, slots=True)
class HoldRequest:
    hold_id: str
    debit_account_id: int
    credit_account_id: int
    amount_micros: int
    currency: str
    expires_at: datetime
    description: str = ""


@dataclass(frozen=True, slots=True)
class HoldPostRequest:
    hold_id: str
    amount_micros: int | None = None  # None: the whole held amount
    # Where the posted amount goes, as ``(account_id, amount_micros)`` credit legs
    # summing to it; None: all to the hold's credit account. Lets one journal entry
    # pay a provider and the platform fee out of a buyer's hold.
    credit_legs: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class HoldVoidRequest:
    hold_id: str
    expired: bool = False  # set by the expiry sweep


Command = EntryRequest | HoldRequest | HoldPostRequest | HoldVoidRequest


@dataclass(frozen=True, slots=True)
class LedgerResult:
    status: str  # "posted" | "replayed" | "rejected"
    position: int | None = None
    code: str = ""
    message: str = ""
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


_ERRORS: dict[str, type[ApplicationError]] = {
    "invalid": InvalidInput,
    "account_not_found": NotFound,
    "hold_not_found": NotFound,
    "exceeds_limit": InsufficientFunds,
    "id_reused": IdempotencyConflict,
    "hold_resolved": Conflict,
    "hold_expired": Conflict,
}


def raise_for(result: LedgerResult) -> LedgerResult:
    """Turn a rejected result into its ApplicationError; pass others through."""
    if result.ok:
        return result
    raise _ERRORS.get(result.code, ApplicationError)(result.message, details=result.details)


def rejected(code: str, message: str, **details) -> LedgerResult:
    return LedgerResult(status="rejected", code=code, message=message, details=details)


# --- static validation (no database) ----------------------------------------


def _check_amount(value: object, name: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be an integer number of micro-units"
    if value <= 0:
        return f"{name} must be positive"
    if value > MAX_AMOUNT_MICROS:
        return f"{name} must be at most {MAX_AMOUNT_MICROS}"
    return None


def _check_id(value: object, name: str) -> str | None:
    if not isinstance(value, str) or not TRANSFER_ID.match(value):
        return (
            f"{name} must be 1-200 characters of letters, digits and :._/@+- "
            "starting with a letter or digit"
        )
    return None


def _check_credit_legs(command: HoldPostRequest) -> str | None:
    legs = command.credit_legs or ()
    if not 1 <= len(legs) < MAX_LEGS:
        return f"credit_legs must have 1 to {MAX_LEGS - 1} legs"
    seen = set()
    for index, leg in enumerate(legs):
        if not isinstance(leg, tuple | list) or len(leg) != 2:
            return f"credit_legs[{index}] must be (account_id, amount_micros)"
        account_id, amount = leg
        if isinstance(account_id, bool) or not isinstance(account_id, int) or account_id in seen:
            return f"credit_legs[{index}].account must be an account id, once"
        seen.add(account_id)
        if problem := _check_amount(amount, f"credit_legs[{index}].amount_micros"):
            return problem
    total = sum(leg[1] for leg in legs)
    if command.amount_micros is not None and total != command.amount_micros:
        return f"credit_legs sum to {total}, not amount_micros {command.amount_micros}"
    return None


def validate(command: Command, now: datetime) -> str | None:
    if isinstance(command, EntryRequest):
        if problem := _check_id(command.transfer_id, "transfer_id"):
            return problem
        if command.currency not in CURRENCIES:
            return f"currency {command.currency!r} is not one of {', '.join(CURRENCIES)}"
        if not 2 <= len(command.legs) <= MAX_LEGS:
            return f"an entry needs 2 to {MAX_LEGS} legs"
        debits = credits = 0
        seen = set()
        for index, leg in enumerate(command.legs):
            if not isinstance(leg, tuple | list) or len(leg) != 3:
                return f"legs[{index}] must be (account_id, side, amount_micros)"
            account_id, side, amount = leg
            if isinstance(account_id, bool) or not isinstance(account_id, int):
                return f"legs[{index}].account must be an account id"
            if account_id in seen:
                return f"legs[{index}]: account {account_id} appears twice in one entry"
            seen.add(account_id)
            if side not in ("D", "C"):
                return f"legs[{index}].side must be 'D' or 'C'"
            if problem := _check_amount(amount, f"legs[{index}].amount_micros"):
                return problem
            if side == "D":
                debits += amount
            else:
                credits += amount
        if debits != credits:
            return f"debits ({debits}) must equal credits ({credits})"
        return None
    if isinstance(command, HoldRequest):
        if problem := _check_id(command.hold_id, "hold_id"):
            return problem
        if command.currency not in CURRENCIES:
            return f"currency {command.currency!r} is not one of {', '.join(CURRENCIES)}"
        if command.debit_account_id == command.credit_account_id:
            return "a hold needs two different accounts"
        if problem := _check_amount(command.amount_micros, "amount_micros"):
            return problem
        if command.expires_at.tzinfo is None:
            return "expires_at must be timezone-aware"
        if not now < command.expires_at <= now + MAX_HOLD_TIMEOUT:
            return "expires_at must be in the future and at most 366 days away"
        return None
    if isinstance(command, HoldPostRequest):
        if problem := _check_id(command.hold_id, "hold_id"):
            return problem
        if command.amount_micros is not None and (
            problem := _check_amount(command.amount_micros, "amount_micros")
        ):
            return problem
        if command.credit_legs is not None:
            return _check_credit_legs(command)
        return None
    if isinstance(command, HoldVoidRequest):
        return _check_id(command.hold_id, "hold_id")
    return f"not a ledger command: {type(command).__name__}"
