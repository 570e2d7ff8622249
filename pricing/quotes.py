"""Quotes and estimates: a fine-tune job's price before it runs, ``(training tokens x
epochs + validation tokens x evaluations) x rate`` with the price book's per-job
minimum, checked against the buyer's available credit."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from core.errors import InvalidInput
from core.money import rate_amount
from ledger.selectors import available_credit
from pricing.book import (
    TOKENS_UNIT,
    TRAINING_TYPES,
    price_at,
    size_tier,
)
from pricing.schedule import MAX_PASSES, MAX_TOKENS

logger = logging.getLogger(__name__)


# --- the fine-tune estimate -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FineTuneQuote:
    model: str
    tier: str
    training_type: str
    billable_tokens: int
    rate_micros: int  # per 1M tokens
    usage_micros: int  # tokens at the rate (or, for a final bill, what was rated)
    minimum_micros: int
    amount_micros: int  # max(usage, minimum)
    currency: str
    available_micros: int | None = None  # the buyer's available credit, when asked
    priced_at: datetime | None = None

    @property
    def minimum_applied(self) -> bool:
        return self.amount_micros > self.usage_micros

    @property
    def covered(self) -> bool | None:
        if self.available_micros is None:
            return None
        return self.available_micros >= self.amount_micros


def _count(value: object, field: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(
            f"{field} must be a whole number from {minimum} to {maximum}", details={"field": field}
        )
    return value


def fine_tune_quote(
    *,
    model: str,
    training_type: str,
    training_tokens: int,
    epochs: int = 1,
    validation_tokens: int = 0,
    evaluations: int = 0,
    organization_id: int | None = None,
    at: datetime | None = None,
    rated_micros: int | None = None,
) -> FineTuneQuote:
    """What a fine-tune costs: ``(training × epochs + validation × evaluations) × rate``,
    at least the job minimum. For a final bill pass ``rated_micros`` (what rating
    charged, event by event) and the minimum is applied to that instead."""
    at = at or timezone.now()
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise InvalidInput("model must be a model name", details={"field": "model"})
    if training_type not in TRAINING_TYPES:
        raise InvalidInput(
            f"training_type must be one of {', '.join(TRAINING_TYPES)}",
            details={"field": "training_type"},
        )
    training_tokens = _count(training_tokens, "training_tokens", minimum=0, maximum=MAX_TOKENS)
    epochs = _count(epochs, "epochs", minimum=1, maximum=MAX_PASSES)
    validation_tokens = _count(
        validation_tokens, "validation_tokens", minimum=0, maximum=MAX_TOKENS
    )
    evaluations = _count(evaluations, "evaluations", minimum=0, maximum=MAX_PASSES)
    currency = settings.TANDEM_CURRENCY
    tier = size_tier(model)
    rate = price_at("fine_tune", tier=tier, variant=training_type, at=at, currency=currency).value
    minimum = price_at("fine_tune_minimum", at=at, currency=currency).value
    billable = training_tokens * epochs + validation_tokens * evaluations
    usage = rated_micros if rated_micros is not None else rate_amount(billable, rate, TOKENS_UNIT)
    available = (
        available_credit(organization_id=organization_id, currency=currency)
        if organization_id is not None
        else None
    )
    return FineTuneQuote(
        model=model,
        tier=tier,
        training_type=training_type,
        billable_tokens=billable,
        rate_micros=rate,
        usage_micros=usage,
        minimum_micros=minimum,
        amount_micros=max(usage, minimum),
        currency=currency,
        available_micros=available,
        priced_at=at,
    )
