"""A minimal price table, and buyers' billing terms, until the price book lands.

The interface the price book will keep: ``rate_for(usage_type, dimensions, at)``
returns a ``Rate`` — an integer rate in micro-units per ``unit`` of the usage's
quantity, who is paid, and the platform fee on top. ``billing.rating`` calls nothing
else, so a versioned, per-buyer price book can replace this module's body.

- Tokens (managed fine-tunes and inference) are priced per 1M tokens by model size
  tier (from the model's name: ``…-8b`` is small, ``…-70b`` medium, larger is large)
  and, for training and evaluation tokens, by the training type (LoRA/full, SFT/DPO).
  Evaluation (validation) tokens cost what training tokens of the job cost, as in
  the fine-tune estimate ``(training * epochs + validation * evaluations) * rate``.
- GPU-seconds of a raw lease are priced at the lease's own price per GPU-hour
  (carried on the event as ``dimensions.lease_price_micros_per_hour`` until leases
  live in the marketplace) and paid to the provider; the platform fee is added on
  top for the buyer.

Billing terms (prepaid or postpaid; what to do with running work when prepaid credit
runs out) are events on the stream ``terms:<org id>``: there is no table to migrate,
and the newest event is the org's terms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from django.conf import settings

from core.errors import InvalidInput
from core.eventstore import NewEvent, event_append, stream_version
from core.models import Event, Organization

TOKENS_UNIT = 1_000_000
SECONDS_PER_HOUR = 3600
PLATFORM_FEE_BPS = 1_000  # 10% of the lease price, paid by the buyer on top
BPS = 10_000

# µ-units per 1M tokens, by tier.
_TRAINING: dict[tuple[str, str], int] = {
    ("small", "lora-sft"): 480_000,
    ("medium", "lora-sft"): 1_500_000,
    ("large", "lora-sft"): 2_900_000,
    ("small", "full-sft"): 540_000,
    ("medium", "full-sft"): 1_650_000,
    ("large", "full-sft"): 3_200_000,
    ("small", "lora-dpo"): 1_200_000,
    ("medium", "lora-dpo"): 3_750_000,
    ("large", "lora-dpo"): 7_250_000,
    ("small", "full-dpo"): 1_350_000,
    ("medium", "full-dpo"): 4_125_000,
    ("large", "full-dpo"): 8_000_000,
}
_INFERENCE: dict[tuple[str, str], int] = {
    ("small", "tokens.prompt"): 100_000,
    ("medium", "tokens.prompt"): 600_000,
    ("large", "tokens.prompt"): 880_000,
    ("small", "tokens.completion"): 200_000,
    ("medium", "tokens.completion"): 1_200_000,
    ("large", "tokens.completion"): 1_760_000,
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


@lru_cache(maxsize=4096)
def model_tier(model: str) -> str:
    """small (≤ 16B parameters), medium (≤ 80B), large; medium when the name says nothing."""
    sizes = [float(n) / (1000 if unit.lower() == "m" else 1) for n, unit in _SIZE.findall(model)]
    if not sizes:
        return "medium"
    size = max(sizes)
    return "small" if size <= 16 else "medium" if size <= 80 else "large"


def rate_for(usage_type: str, dimensions: Mapping[str, object], at: datetime) -> Rate:
    """The rate of one usage event. ``at`` is when it was used (one price version for now)."""
    currency = settings.TANDEM_CURRENCY
    if usage_type == "gpu.seconds":
        price = int(dimensions["lease_price_micros_per_hour"])  # type: ignore[call-overload]
        return Rate(price, SECONDS_PER_HOUR, currency, "provider", PLATFORM_FEE_BPS, "gpu")
    tier = model_tier(str(dimensions.get("model", "")))
    if usage_type in ("tokens.training", "tokens.evaluation"):
        training_type = str(dimensions.get("training_type", "lora-sft"))
        return Rate(
            _TRAINING[(tier, training_type)], TOKENS_UNIT, currency, label=f"{tier} {training_type}"
        )
    if (tier, usage_type) in _INFERENCE:
        return Rate(
            _INFERENCE[(tier, usage_type)], TOKENS_UNIT, currency, label=f"{tier} inference"
        )
    raise KeyError(f"no price for usage type {usage_type!r}")


# --- billing terms ----------------------------------------------------------

TERMS_STREAM = "billing.terms"
TERMS_SET = "BillingTermsSet"
ON_EXHAUSTED = ("pause", "stop")


@dataclass(frozen=True, slots=True)
class BillingTerms:
    postpaid: bool = False  # usage debits the receivable instead of prepaid credit
    on_credit_exhausted: str = "pause"  # what running work does when credit runs out


def _terms_stream(organization_id: int) -> str:
    return f"terms:{organization_id}"


def billing_terms_for(*, organization_ids: Iterable[int]) -> dict[int, BillingTerms]:
    """Each org's newest terms; the default (prepaid, pause) where none were set."""
    ids = list(organization_ids)
    found = {org_id: BillingTerms() for org_id in ids}
    newest: dict[str, int] = {}
    rows = Event.objects.filter(stream_id__in=[_terms_stream(i) for i in ids]).values_list(
        "stream_id", "version", "payload"
    )
    for stream_id, version, payload in rows:
        if version > newest.get(stream_id, 0):
            newest[stream_id] = version
            found[int(stream_id.split(":", 1)[1])] = BillingTerms(
                postpaid=bool(payload["postpaid"]),
                on_credit_exhausted=payload["on_credit_exhausted"],
            )
    return found


def billing_terms_set(
    *, organization: Organization, postpaid: bool, on_credit_exhausted: str, actor: str
) -> BillingTerms:
    """Record an org's billing terms (finance staff, or a contract import)."""
    if on_credit_exhausted not in ON_EXHAUSTED:
        raise InvalidInput(
            f"on_credit_exhausted must be one of {', '.join(ON_EXHAUSTED)}",
            details={"field": "on_credit_exhausted"},
        )
    stream_id = _terms_stream(organization.pk)
    event_append(
        stream_type=TERMS_STREAM,
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[
            NewEvent(TERMS_SET, {"postpaid": postpaid, "on_credit_exhausted": on_credit_exhausted})
        ],
        tenant_id=organization.pk,
        metadata={"actor": actor},
    )
    return BillingTerms(postpaid=postpaid, on_credit_exhausted=on_credit_exhausted)
