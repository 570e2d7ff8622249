"""Providers' Stripe Connect accounts: created or linked once, onboarding links, and
their status as ``account.updated`` reports it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import stripe
from django.conf import settings

from core.db import retry_transaction
from core.errors import InvalidInput
from core.models import Organization
from payments.common import _stripe_message
from payments.models import ConnectedAccount
from payments.stripe_client import as_dict, is_transient, stripe_client, unavailable

# --- connected accounts (providers) ----------------------------------------------


def connected_account_create(
    *, organization: Organization, country: str | None = None, email: str = ""
) -> ConnectedAccount:
    """The provider's Stripe Connect Express account, created once."""
    if not organization.is_provider:
        raise InvalidInput(f"{organization.name} is not a provider organization")
    found = ConnectedAccount.objects.filter(organization=organization).first()
    if found is not None:
        return found
    country = (country or settings.STRIPE_CONNECT_DEFAULT_COUNTRY).upper()
    if len(country) != 2 or not country.isalpha():
        raise InvalidInput("country must be a two-letter ISO code", details={"field": "country"})
    params: dict[str, Any] = {
        "type": "express",
        "country": country,
        "capabilities": {"transfers": {"requested": True}},
        "business_profile": {"name": organization.name},
        "metadata": {"tandem_organization": str(organization.pk)},
    }
    if email:
        params["email"] = email
    client = stripe_client()
    try:
        account = client.v1.accounts.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": f"tandem-connect-{organization.pk}"},
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        raise InvalidInput(_stripe_message(exc)) from exc
    fields = as_dict(account)
    row, _ = ConnectedAccount.objects.get_or_create(
        organization=organization,
        defaults={
            "account_id": account.id,
            "country": country,
            "details_submitted": bool(fields.get("details_submitted")),
            "charges_enabled": bool(fields.get("charges_enabled")),
            "payouts_enabled": bool(fields.get("payouts_enabled")),
        },
    )
    return row


def connected_account_record(
    *, organization: Organization, account_id: str, country: str
) -> ConnectedAccount:
    """Link a provider to a Connect account made outside Tandem (in Stripe's
    dashboard, or the demo's local one); its status follows ``account.updated``."""
    if not organization.is_provider:
        raise InvalidInput(f"{organization.name} is not a provider organization")
    if not account_id.startswith("acct_"):
        raise InvalidInput("account_id must be a Stripe account id (acct_…)")
    row, _ = ConnectedAccount.objects.get_or_create(
        organization=organization, defaults={"account_id": account_id, "country": country.upper()}
    )
    return row


def account_link_create(
    *, connected_account: ConnectedAccount, refresh_url: str, return_url: str
) -> str:
    """A one-time onboarding link for the provider (it expires in minutes, so it
    is made on request and never stored)."""
    client = stripe_client()
    try:
        link = client.v1.account_links.create(
            params={
                "account": connected_account.account_id,
                "refresh_url": refresh_url,
                "return_url": return_url,
                "type": "account_onboarding",
            }
        )
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        raise InvalidInput(_stripe_message(exc)) from exc
    return str(link.url)


@retry_transaction
def connected_account_sync(*, account: dict[str, Any], as_of: datetime) -> str:
    """Status from an ``account.updated`` (the account as re-fetched from Stripe, or
    the event's copy when Stripe is not configured): a copy older than the last
    applied changes nothing."""
    row = (
        ConnectedAccount.objects.select_for_update()
        .filter(account_id=str(account.get("id") or ""))
        .first()
    )
    if row is None:
        return f"account {account.get('id')} is not a Tandem provider's"
    if row.synced_at is not None and as_of < row.synced_at:
        return f"account {row.account_id}: older than what was applied; ignored"
    requirements = account.get("requirements") or {}
    row.details_submitted = bool(account.get("details_submitted"))
    row.charges_enabled = bool(account.get("charges_enabled"))
    row.payouts_enabled = bool(account.get("payouts_enabled"))
    row.requirements_due = list(requirements.get("currently_due") or [])
    row.synced_at = as_of
    row.save()
    return f"account {row.account_id} is {row.status}"
