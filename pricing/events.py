"""Pricing's events: a buyer's credit ran out while usage was being rated
(``CreditExhausted``, on ``billing.credit:<account>``; the name predates the split)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.eventstore import DomainEvent

# --- buyers' credit -----------------------------------------------------------

CREDIT_STREAM = "billing.credit"  # one stream per credit account: its exhaustions
CREDIT_EXHAUSTED = "CreditExhausted"


@dataclass(frozen=True, slots=True)
class CreditExhausted(DomainEvent):
    """A prepaid buyer's credit can cover no more usage. ``action`` is the buyer's
    setting: ``pause`` or ``stop`` its running work."""

    schema_version = 1
    organization: int
    account: int
    currency: str
    credits_posted_micros: int
    available_micros: int
    action: str

    def payload(self) -> dict[str, Any]:
        return {
            "organization": self.organization,
            "account": self.account,
            "currency": self.currency,
            "credits_posted_micros": self.credits_posted_micros,
            "available_micros": self.available_micros,
            "action": self.action,
        }
