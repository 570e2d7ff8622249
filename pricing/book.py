"""The price book: versioned prices, looked up at the time usage happened.

``rate_for(usage_type, dimensions, at)`` is what rating (billing.rating) and the lease
holds (pricing.lease_holds) call: an integer rate in micro-units per ``unit`` of the usage's
quantity, who is paid, and the platform fee on top. The price comes from the version
in force at ``at`` — a price change is a new ``pricing.models.Price`` row with a later
``effective_from`` (scheduled only into the future: billing.pricebook), so rating a
month again, or rating late usage, always uses the prices of its own time.

- Tokens of managed fine-tunes are priced per 1M by model size tier (from the model's
  name: ``…-8b`` is up to 16B parameters) and training type (LoRA/full × SFT/DPO);
  evaluation (validation) tokens at the job's training rate, as in the estimate
  ``(training * epochs + validation * evaluations) * rate``.
- Inference is priced per 1M prompt and per 1M completion tokens by tier. Tokens of
  a batch (usage with ``service_tier=batch``: run on interruptible capacity) are
  priced at the tier's rate less its batch discount (basis points, per tier), the
  discounted rate rounded half-even to a micro-unit per 1M tokens once, so every
  amount is still ``quantity x rate / unit`` rounded once.
- GPU-seconds of a raw lease are priced at the lease's own price per GPU-hour, paid to
  the provider; the platform fee (basis points, from the price book) is added on top.

The book is cached per process and re-read when its fingerprint (row count, newest id)
changes, checked at most every ``PRICEBOOK_CACHE_SECONDS``. That is safe because a
change must take effect at least ``PRICE_CHANGE_LEAD`` ahead: longer than the cache
can be stale plus how far ahead usage may be stamped (metering refuses more than five
minutes), so no usage is ever rated before its price's newest version is loaded.

Where the table has no version of a price at ``at``, the built-in default book below
(the one the data migration seeds) is in force: a fresh or emptied database still rates.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.db.models import Count, Max

from core.money import rate_amount
from pricing.models import Price

TOKENS_UNIT = 1_000_000
SECONDS_PER_HOUR = 3600
BPS = 10_000
PLATFORM_FEE_BPS = 1_000  # the default: 10% of the lease price, paid by the buyer on top
BATCH_DISCOUNT_BPS = 5_000  # the default: batch tokens at half the online price
BATCH_SERVICE_TIER = "batch"  # the usage dimension ``service_tier`` of a batch's tokens
PRICE_CHANGE_LEAD = timedelta(minutes=15)
PRICEBOOK_CACHE_SECONDS = 10.0
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# Size tiers: (name, largest size in billions of parameters; None: no bound).
TIERS: tuple[tuple[str, float | None], ...] = (
    ("up-to-16b", 16),
    ("17b-69b", 69.99),
    ("70b-100b", 100),
    ("over-100b", None),
)
TIER_NAMES = tuple(name for name, _ in TIERS)
UNKNOWN_SIZE_TIER = "17b-69b"  # a model whose name says no size
TRAINING_TYPES = ("lora-sft", "lora-dpo", "full-sft", "full-dpo")
INFERENCE_VARIANTS = ("prompt", "completion")

# The default price book, in µ-units of the ledger currency: (item, tier, variant) → value.
DEFAULT_BOOK: dict[tuple[str, str, str], int] = {
    **{
        ("fine_tune", tier, training_type): value
        for tier, values in {
            "up-to-16b": (480_000, 1_200_000, 540_000, 1_350_000),
            "17b-69b": (1_000_000, 2_500_000, 1_100_000, 2_750_000),
            "70b-100b": (1_500_000, 3_750_000, 1_650_000, 4_125_000),
            "over-100b": (2_900_000, 7_250_000, 3_200_000, 8_000_000),
        }.items()
        for training_type, value in zip(TRAINING_TYPES, values, strict=True)
    },
    **{
        ("inference", tier, variant): value
        for tier, values in {
            "up-to-16b": (100_000, 200_000),
            "17b-69b": (300_000, 600_000),
            "70b-100b": (600_000, 1_200_000),
            "over-100b": (880_000, 1_760_000),
        }.items()
        for variant, value in zip(INFERENCE_VARIANTS, values, strict=True)
    },
    # Batches run on interruptible capacity: half the online token price, per tier.
    **{("batch_discount", tier, ""): BATCH_DISCOUNT_BPS for tier in TIER_NAMES},
    ("gpu_lease_fee", "", ""): PLATFORM_FEE_BPS,
    ("fine_tune_minimum", "", ""): 5_000_000,
    ("welcome_credit", "", ""): 25_000_000,
    ("welcome_credit_days", "", ""): 90,
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([bm])(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rate:
    rate_micros: int  # per ``unit`` of quantity
    unit: int
    currency: str
    payee: str = "platform"  # platform: revenue; provider: the lease's provider
    fee_bps: int = 0  # platform fee on top of a provider's amount
    label: str = ""


def _size_billions(model: str) -> float | None:
    sizes = [float(n) / (1000 if unit.lower() == "m" else 1) for n, unit in _SIZE.findall(model)]
    return max(sizes) if sizes else None


def batch_rate(rate_micros: int, discount_bps: int) -> int:
    """An online token rate less a batch discount in basis points (0 to 10,000),
    rounded half-even to a micro-unit per 1M tokens: integers throughout."""
    discount = min(max(discount_bps, 0), BPS)
    return rate_amount(rate_micros, BPS - discount, BPS)


@lru_cache(maxsize=4096)
def size_tier(model: str) -> str:
    """The price book's tier of a model, from the parameter count in its name."""
    size = _size_billions(model)
    if size is None:
        return UNKNOWN_SIZE_TIER
    for name, bound in TIERS:
        if bound is None or size <= bound:
            return name
    return TIERS[-1][0]


@lru_cache(maxsize=4096)
def model_tier(model: str) -> str:
    """A coarse size class for display: small (≤ 16B), medium (≤ 80B), large."""
    size = _size_billions(model)
    if size is None:
        return "medium"
    return "small" if size <= 16 else "medium" if size <= 80 else "large"


# --- the book -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceVersion:
    item: str
    tier: str
    variant: str
    currency: str
    value: int
    effective_from: datetime
    price_id: int | None  # None: the built-in default


class _Book:
    def __init__(self, rows: Iterable[tuple[str, str, str, str, int, datetime, int]]) -> None:
        self.versions: dict[tuple[str, str, str, str], list[PriceVersion]] = {}
        for item, tier, variant, currency, value, effective_from, pk in rows:
            self.versions.setdefault((item, tier, variant, currency), []).append(
                PriceVersion(item, tier, variant, currency, value, effective_from, pk)
            )
        for versions in self.versions.values():
            versions.sort(key=lambda v: v.effective_from)

    def at(self, item: str, tier: str, variant: str, currency: str, at: datetime) -> PriceVersion:
        found = None
        for version in self.versions.get((item, tier, variant, currency), ()):
            if version.effective_from > at:
                break
            found = version
        if found is not None:
            return found
        try:
            value = DEFAULT_BOOK[(item, tier, variant)]
        except KeyError:
            raise LookupError(f"no price for {item} {tier} {variant}".strip()) from None
        return PriceVersion(item, tier, variant, currency, value, EPOCH, None)


_lock = threading.Lock()
_cache: dict[str, object] = {"book": None, "checked": 0.0, "fingerprint": None}


def _fingerprint() -> tuple[int, int | None]:

    found = Price.objects.aggregate(n=Count("id"), newest=Max("id"))
    return found["n"], found["newest"]


def price_book() -> _Book:
    """The whole book (every version), cached as the module docstring says."""

    with _lock:
        book = _cache["book"]
        now = time.monotonic()
        if book is not None and now - float(_cache["checked"]) < PRICEBOOK_CACHE_SECONDS:  # type: ignore[arg-type]
            return book  # type: ignore[return-value]
        fingerprint = _fingerprint()
        if book is None or fingerprint != _cache["fingerprint"]:
            book = _Book(
                Price.objects.values_list(
                    "item", "tier", "variant", "currency", "value", "effective_from", "pk"
                )
            )
        _cache.update(book=book, checked=now, fingerprint=fingerprint)
        return book  # type: ignore[return-value]


def price_book_forget() -> None:
    """Drop the cached book: the next lookup reads the table (after a change here)."""
    with _lock:
        _cache.update(book=None, checked=0.0, fingerprint=None)


def price_at(
    item: str, *, at: datetime, tier: str = "", variant: str = "", currency: str | None = None
) -> PriceVersion:
    return price_book().at(item, tier, variant, currency or settings.TANDEM_CURRENCY, at)


def rate_for(usage_type: str, dimensions: Mapping[str, object], at: datetime) -> Rate:
    """The rate of one usage event at ``at``, the time it was used."""
    currency = settings.TANDEM_CURRENCY
    book = price_book()
    if usage_type == "gpu.seconds":
        price = int(dimensions["lease_price_micros_per_hour"])  # type: ignore[call-overload]
        fee = book.at("gpu_lease_fee", "", "", currency, at).value
        return Rate(price, SECONDS_PER_HOUR, currency, "provider", fee, "gpu")
    tier = size_tier(str(dimensions.get("model", "")))
    if usage_type in ("tokens.training", "tokens.evaluation"):
        training_type = str(dimensions.get("training_type", "lora-sft"))
        version = book.at("fine_tune", tier, training_type, currency, at)
        return Rate(version.value, TOKENS_UNIT, currency, label=f"{tier} {training_type}")
    if usage_type in ("tokens.prompt", "tokens.completion"):
        variant = usage_type.split(".", 1)[1]
        version = book.at("inference", tier, variant, currency, at)
        if dimensions.get("service_tier") == BATCH_SERVICE_TIER:
            discount = book.at("batch_discount", tier, "", currency, at).value
            return Rate(
                batch_rate(version.value, discount),
                TOKENS_UNIT,
                currency,
                label=f"{tier} batch inference {variant}",
            )
        return Rate(version.value, TOKENS_UNIT, currency, label=f"{tier} inference {variant}")
    raise KeyError(f"no price for usage type {usage_type!r}")
