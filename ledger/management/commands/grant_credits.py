"""``manage.py grant_credits --org NAME --amount 25.00 --reason TEXT``: free credits
for a buyer, as a journal entry from the platform's promo account."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import ApplicationError
from core.models import Organization
from core.money import CURRENCIES, Money, MoneyError
from ledger import selectors, services
from ledger.models import Account

AMOUNT_RULE = "--amount must be a positive decimal with at most 6 places"


class Command(BaseCommand):
    help = "Grant free credits to a buyer organization (debits the platform's promo account)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="the buyer organization's name")
        parser.add_argument("--amount", required=True, help='decimal, e.g. "25.00"')
        parser.add_argument("--reason", required=True, help="kept on the journal entry")
        parser.add_argument(
            "--currency", default=settings.TANDEM_CURRENCY, choices=sorted(CURRENCIES)
        )
        parser.add_argument(
            "--id",
            dest="transfer_id",
            help="transfer id; running again with the same id grants nothing twice",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name, currency = options["org"], options["currency"]
        organization = Organization.objects.filter(name=name).first()
        if organization is None:
            raise CommandError(f"no organization named {name!r}")
        if not organization.is_buyer:
            raise CommandError(
                f"{name!r} is a {organization.kind} organization; credits go to buyers"
            )
        amount = _parse_amount(options["amount"], currency)
        try:
            result = services.credits_grant(
                organization=organization,
                amount_micros=amount.amount_micros,
                currency=currency,
                reason=options["reason"],
                transfer_id=options["transfer_id"],
                actor="cli:grant_credits",
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        account = selectors.account_for_org(
            organization=organization, kind=Account.Kind.CREDIT, currency=currency
        )
        assert account is not None  # credits_grant opened it
        available = Money(account.available_micros, currency)  # type: ignore[attr-defined]
        if result.status == "replayed":
            self.stdout.write(
                f"Already granted (journal entry {result.position}); nothing changed."
            )
        else:
            self.stdout.write(
                f"Granted {amount} to {organization.name} (journal entry {result.position})."
            )
        self.stdout.write(f"Available balance of {organization.name}: {available}")


def _parse_amount(text: str, currency: str) -> Money:
    try:
        amount = Money.parse(text, currency)
    except MoneyError as exc:
        raise CommandError(f"{AMOUNT_RULE} ({exc})") from None
    if amount.amount_micros <= 0:
        raise CommandError(f"{AMOUNT_RULE} (got {text!r})")
    return amount
