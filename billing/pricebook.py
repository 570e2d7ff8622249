"""Price book services: scheduling price changes, the fine-tune estimate, and the
welcome credits a new buyer organization gets.

Reading prices (and rating with them) is billing.pricing; this module writes.

- ``price_schedule``: finance schedules a new version of a price. Only into the
  future (at least ``PRICE_CHANGE_LEAD`` ahead), so usage already rated — or still
  arriving for the past — is never re-priced. Each change is also an event
  (``PriceScheduled`` on the ``pricebook`` stream) so who changed what is on record.
- ``fine_tune_quote``: ``(training tokens × epochs + validation tokens × evaluations)
  × rate`` with the job minimum applied, and whether the buyer's available credit
  covers it. The estimate endpoint and the final bill of a job (billing.invoicing)
  both call it.
- ``welcome_credit_grant``: the promo grant of a new buyer, once per organization
  (transfer id ``welcome:<org>``), from the promo account; the ``billing.welcome``
  follower calls it for every ``OrganizationCreated`` event of a buyer.
  ``promo_credits_expire``: what is left of a grant when it expires goes back to the
  promo account (promo credit is spent first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import events as ev
from billing.models import Account, Balance, Posting, Price
from billing.pricing import (
    INFERENCE_VARIANTS,
    PRICE_CHANGE_LEAD,
    TIER_NAMES,
    TOKENS_UNIT,
    TRAINING_TYPES,
    price_at,
    price_book_forget,
    size_tier,
)
from billing.services import (
    EntryRequest,
    account_open,
    ledger_execute,
    platform_account,
    raise_for,
)
from core.errors import Conflict, InvalidInput, NotFound
from core.eventstore import NewEvent, RecordedEvent, event_append, stream_version
from core.followers import Follower, register
from core.models import Event, Organization
from core.money import CURRENCIES, MAX_AMOUNT_MICROS, rate_amount

logger = logging.getLogger(__name__)

PRICEBOOK_STREAM = "billing.pricebook"
PRICE_SCHEDULED = "PriceScheduled"
MAX_TOKENS = 10**13
MAX_PASSES = 1000

# Which (tier, variant) each item takes, for validating a change.
ITEM_SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Price.Item.FINE_TUNE: (TIER_NAMES, TRAINING_TYPES),
    Price.Item.INFERENCE: (TIER_NAMES, INFERENCE_VARIANTS),
    Price.Item.GPU_LEASE_FEE: (("",), ("",)),
    Price.Item.FINE_TUNE_MINIMUM: (("",), ("",)),
    Price.Item.WELCOME_CREDIT: (("",), ("",)),
    Price.Item.WELCOME_CREDIT_DAYS: (("",), ("",)),
}
ITEM_LIMITS: dict[str, int] = {
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
                expected_version=stream_version(f"price:{item}:{tier}:{variant}:{currency}"),
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


def available_credit(*, organization_id: int, currency: str) -> int:
    """Posted minus pending on the buyer's prepaid credit, plus its credit limit."""
    account = Account.objects.filter(
        organization_id=organization_id, kind=Account.Kind.CREDIT, currency=currency
    ).first()
    if account is None:
        return 0
    balance = Balance.objects.get(account=account)
    return balance.credit_side_available + (account.overdraft_limit_micros or 0)


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


class PriceBookPort:
    """Registered as ``ports.register("pricebook", PriceBookPort())`` (core.ports)."""

    def fine_tune_estimate(
        self,
        *,
        organization_id: int,
        model: str,
        training_type: str,
        training_tokens: int,
        epochs: int,
        validation_tokens: int = 0,
        evaluations: int = 0,
    ) -> FineTuneQuote:
        return fine_tune_quote(
            model=model,
            training_type=training_type,
            training_tokens=training_tokens,
            epochs=epochs,
            validation_tokens=validation_tokens,
            evaluations=evaluations,
            organization_id=organization_id,
        )

    def fine_tune_job_closed(self, *, organization_id: int, job: str) -> int:
        """The job's final bill: the minimum charge topped up if its usage came to
        less. Returns the amount added (0 when usage reached the minimum).

        The minimum tops up a bill; it is not a fee for asking. A job with no rated
        usage (it ended before its first metered step) was billed nothing and owes
        nothing: 0, and no entry. The marketplace calls this as it records the job's
        end, in its follower, so a job without usage must not raise there."""
        from billing.invoicing import fine_tune_job_close

        organization = Organization.objects.get(pk=organization_id)
        try:
            return fine_tune_job_close(organization=organization, job=job)
        except NotFound as error:
            if error.details.get("job") != job:
                raise  # not the job's missing usage: a real fault
            logger.warning("fine-tune job %s ended with no rated usage: no minimum charged", job)
            return 0


# --- welcome credits ----------------------------------------------------------------


def welcome_transfer_id(organization_id: int) -> str:
    return f"welcome:{organization_id}"


def welcome_credit_grant(*, organization: Organization, at: datetime | None = None) -> int:
    """Grant a new buyer the price book's welcome credit (as priced at ``at``, when the
    organization was created), once: a second call is a ledger replay. Returns the
    amount granted (0 when the book says none)."""
    if not organization.is_buyer:
        raise InvalidInput(f"{organization.name} is not a buyer organization")
    now = at or timezone.now()
    currency = settings.TANDEM_CURRENCY
    amount = price_at("welcome_credit", at=now, currency=currency).value
    if amount <= 0:
        return 0
    days = price_at("welcome_credit_days", at=now, currency=currency).value
    promo = platform_account(kind=Account.Kind.PROMO, currency=currency)
    credit = account_open(organization=organization, kind=Account.Kind.CREDIT, currency=currency)
    expires = (now + timedelta(days=days)).date().isoformat()
    raise_for(
        ledger_execute(
            [
                EntryRequest(
                    transfer_id=welcome_transfer_id(organization.pk),
                    currency=currency,
                    legs=((promo.pk, "D", amount), (credit.pk, "C", amount)),
                    kind="grant",
                    description=f"welcome credits, promo; unused credit expires {expires}",
                )
            ],
            actor="welcome",
        )[0]
    )
    return amount


def promo_credits_expire(*, now: datetime | None = None) -> int:
    """Take back what is left of welcome grants past their expiry (promo credit is
    spent first: what the buyer spent since the grant used it up first). Each grant
    expires once (transfer id ``welcome:<org>:expired``). Returns grants expired."""
    now = now or timezone.now()
    expired = 0
    grants = Event.objects.filter(
        stream_type=ev.ENTRY_STREAM, stream_id__startswith="entry:welcome:"
    ).order_by("position")
    for grant in grants.iterator():
        transfer_id = grant.payload["transfer_id"]
        if transfer_id.count(":") != 1:
            continue  # an expiry entry itself
        days = price_at(
            "welcome_credit_days", at=grant.recorded_at, currency=grant.payload["currency"]
        ).value
        if grant.recorded_at + timedelta(days=days) > now:
            continue
        if Event.objects.filter(stream_id=ev.entry_stream_id(f"{transfer_id}:expired")).exists():
            continue
        if _promo_expire_one(grant, now):
            expired += 1
    return expired


def _promo_expire_one(grant: Event, now: datetime) -> bool:
    legs = grant.payload["legs"]
    promo_id, credit_id, amount = next(
        (d[0], c[0], c[2]) for d in legs if d[1] == "D" for c in legs if c[1] == "C"
    )
    spent = sum(
        Posting.objects.filter(
            account_id=credit_id, side="D", entry_id__gt=grant.position
        ).values_list("amount_micros", flat=True)
    )
    left = max(0, amount - spent)
    left = min(left, max(0, available_credit_posted(credit_id)))
    if left <= 0:
        return False
    raise_for(
        ledger_execute(
            [
                EntryRequest(
                    transfer_id=f"{grant.payload['transfer_id']}:expired",
                    currency=grant.payload["currency"],
                    legs=((credit_id, "D", left), (promo_id, "C", left)),
                    kind="grant_expiry",
                    description="unused welcome credits expired",
                )
            ],
            actor="welcome",
            now=now,
        )[0]
    )
    return True


def available_credit_posted(account_id: int) -> int:
    return Balance.objects.get(account_id=account_id).credit_side_available


class WelcomeCredits(Follower):
    """Grants every new buyer organization its welcome credits."""

    name = "billing.welcome"
    stream_types = ("core.organization",)

    def handle(self, event: RecordedEvent) -> None:
        if event.type != "OrganizationCreated":
            return
        if event.payload["kind"] not in (Organization.Kind.BUYER, Organization.Kind.BOTH):
            return
        if event.payload.get("is_operator"):
            return  # the platform does not give itself credits
        organization = Organization.objects.filter(pk=event.payload["organization"]).first()
        if organization is None:
            raise NotFound(f"organization {event.payload['organization']} is gone")
        welcome_credit_grant(organization=organization, at=event.recorded_at)


welcome_credits = register(WelcomeCredits())
