"""Welcome credits: the price book's promotional credit granted once to every new
buyer organization (a follower of ``OrganizationCreated``), and its expiry."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from core.errors import InvalidInput, NotFound
from core.eventstore import RecordedEvent
from core.followers import Follower, register
from core.models import Event, Organization
from core.services import ORGANIZATION_CREATED
from ledger import events as ev
from ledger.models import Account, Posting
from ledger.selectors import available_credit_posted
from ledger.services import EntryRequest, account_open, ledger_execute, platform_account, raise_for
from pricing.book import (
    price_at,
)

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


class WelcomeCredits(Follower):
    """Grants every new buyer organization its welcome credits."""

    name = "billing.welcome"
    stream_types = ("core.organization",)

    def handle(self, event: RecordedEvent) -> None:
        if event.type != ORGANIZATION_CREATED:
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
