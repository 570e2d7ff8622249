"""Scheduling the price book's changes.

Reading prices (and rating with them) is pricing.book; this module writes.

- ``price_schedule``: finance schedules a new version of a price. Only into the
  future (at least ``PRICE_CHANGE_LEAD`` ahead), so usage already rated — or still
  arriving for the past — is never re-priced. Each change is also an event
  (``PriceScheduled`` on the ``pricebook`` stream) so who changed what is on record.

The fine-tune estimate is quotes.py; the welcome credits, welcome.py.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, InvalidInput
from core.eventstore import NewEvent, event_append
from core.money import CURRENCIES, MAX_AMOUNT_MICROS
from pricing.book import (
    INFERENCE_VARIANTS,
    PRICE_CHANGE_LEAD,
    TIER_NAMES,
    TRAINING_TYPES,
    price_book_forget,
)
from pricing.models import Price

PRICEBOOK_STREAM = "billing.pricebook"
PRICE_SCHEDULED = "PriceScheduled"
MAX_TOKENS = 10**13
MAX_PASSES = 1000

# Which (tier, variant) each item takes, for validating a change.
ITEM_SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Price.Item.FINE_TUNE: (TIER_NAMES, TRAINING_TYPES),
    Price.Item.INFERENCE: (TIER_NAMES, INFERENCE_VARIANTS),
    Price.Item.BATCH_DISCOUNT: (TIER_NAMES, ("",)),
    Price.Item.GPU_LEASE_FEE: (("",), ("",)),
    Price.Item.FINE_TUNE_MINIMUM: (("",), ("",)),
    Price.Item.WELCOME_CREDIT: (("",), ("",)),
    Price.Item.WELCOME_CREDIT_DAYS: (("",), ("",)),
}
ITEM_LIMITS: dict[str, int] = {
    Price.Item.BATCH_DISCOUNT: 10_000,
    Price.Item.GPU_LEASE_FEE: 10_000,
    Price.Item.WELCOME_CREDIT_DAYS: 3660,
}


# --- price changes --------------------------------------------------------------


def price_schedule(
    *,
    item: str,
    tier: str = "",
    variant: str = "",
    value: int,
    effective_from: datetime,
    currency: str | None = None,
    reason: str = "",
    public: bool = True,
    actor: str = "system",
    now: datetime | None = None,
) -> Price:
    """Schedule a new version of one price, in force from ``effective_from``."""
    now = now or timezone.now()
    currency = currency or settings.TANDEM_CURRENCY
    if item not in ITEM_SHAPES:
        raise InvalidInput(
            f"item must be one of {', '.join(ITEM_SHAPES)}", details={"field": "item"}
        )
    tiers, variants = ITEM_SHAPES[item]
    if tier not in tiers:
        shown = ", ".join(t for t in tiers if t) or "empty"
        raise InvalidInput(f"tier of {item} must be {shown}", details={"field": "tier"})
    if variant not in variants:
        shown = ", ".join(v for v in variants if v) or "empty"
        raise InvalidInput(f"variant of {item} must be {shown}", details={"field": "variant"})
    if currency not in CURRENCIES:
        raise InvalidInput(f"unknown currency {currency!r}", details={"field": "currency"})
    limit = ITEM_LIMITS.get(item, MAX_AMOUNT_MICROS)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise InvalidInput(
            f"value must be a whole number from 0 to {limit}", details={"field": "value"}
        )
    if effective_from.tzinfo is None:
        raise InvalidInput(
            "effective_from must carry a time zone", details={"field": "effective_from"}
        )
    if effective_from < now + PRICE_CHANGE_LEAD:
        raise InvalidInput(
            "a price change takes effect in the future, at least "
            f"{int(PRICE_CHANGE_LEAD.total_seconds() // 60)} minutes ahead: usage already "
            "rated is never re-priced",
            details={"field": "effective_from"},
        )
    try:
        with transaction.atomic():
            price = Price.objects.create(
                item=item,
                tier=tier,
                variant=variant,
                currency=currency,
                value=value,
                effective_from=effective_from,
                public=public,
                reason=reason.strip()[:500],
                created_by=actor[:200],
                created_at=now,
            )
            event_append(
                stream_type=PRICEBOOK_STREAM,
                stream_id=f"price:{item}:{tier}:{variant}:{currency}",
                expected_version=None,
                events=[
                    NewEvent(
                        PRICE_SCHEDULED,
                        {
                            "price": price.pk,
                            "item": item,
                            "tier": tier,
                            "variant": variant,
                            "currency": currency,
                            "value": value,
                            "effective_from": effective_from.isoformat(),
                            "reason": price.reason,
                        },
                    )
                ],
                metadata={"actor": actor},
            )
    except IntegrityError:
        raise Conflict(
            f"{item} {tier} {variant} already has a version from {effective_from.isoformat()}",
            details={"field": "effective_from"},
        ) from None
    price_book_forget()
    return price
