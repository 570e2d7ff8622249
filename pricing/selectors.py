"""Reads of the price book: the public prices in force, the scheduled versions, and
the rates and units the apps above price with."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

# The app's public surface for the apps above it:
from pricing.book import BATCH_SERVICE_TIER as BATCH_SERVICE_TIER
from pricing.book import BPS as BPS
from pricing.book import DEFAULT_BOOK, PriceVersion, price_book
from pricing.book import SECONDS_PER_HOUR as SECONDS_PER_HOUR
from pricing.book import TOKENS_UNIT as TOKENS_UNIT
from pricing.book import batch_rate as batch_rate
from pricing.book import price_at as price_at
from pricing.book import rate_for as rate_for
from pricing.book import size_tier as size_tier
from pricing.models import Price
from pricing.quotes import fine_tune_quote as fine_tune_quote

MONEY_ITEMS = frozenset(
    {
        Price.Item.FINE_TUNE,
        Price.Item.INFERENCE,
        Price.Item.FINE_TUNE_MINIMUM,
        Price.Item.WELCOME_CREDIT,
    }
)


def prices_public(*, at: datetime, currency: str) -> list[PriceVersion]:
    """Every price in force at ``at`` that is public, from the same cached book rating
    uses. A price whose version in force was scheduled as not public is left out
    altogether (showing the version before it would show a price nobody pays)."""
    book = price_book()
    versions = [book.at(item, tier, variant, currency, at) for item, tier, variant in DEFAULT_BOOK]
    public = dict(
        Price.objects.filter(
            pk__in=[v.price_id for v in versions if v.price_id is not None]
        ).values_list("pk", "public")
    )
    return [v for v in versions if v.price_id is None or public.get(v.price_id, False)]


def price_ids_in_force(*, at: datetime, currency: str) -> set[int]:
    """Ids of the stored versions in force at ``at`` (one per price at most)."""
    book = price_book()
    found = (book.at(item, tier, variant, currency, at) for item, tier, variant in DEFAULT_BOOK)
    return {v.price_id for v in found if v.price_id is not None}


def price_versions(*, item: str | None = None, currency: str | None = None) -> QuerySet[Price]:
    """Every stored version of every price (past, in force and scheduled), for finance."""
    versions = Price.objects.all()
    if item is not None:
        versions = versions.filter(item=item)
    if currency is not None:
        versions = versions.filter(currency=currency)
    return versions


PRICE_UNITS: dict[str, str] = {
    Price.Item.FINE_TUNE: "micros per 1M training or evaluation tokens",
    Price.Item.INFERENCE: "micros per 1M tokens",
    Price.Item.BATCH_DISCOUNT: "basis points off the inference price for batch tokens",
    Price.Item.GPU_LEASE_FEE: "basis points on top of the lease price",
    Price.Item.FINE_TUNE_MINIMUM: "micros per fine-tune job",
    Price.Item.WELCOME_CREDIT: "micros granted to a new buyer",
    Price.Item.WELCOME_CREDIT_DAYS: "days before unused welcome credit expires",
}
