"""A buyer's billing profile (legal name, address, tax id and rate), copied into every
invoice finalized after. The operator's finance staff set all of it
(``billing_profile_set``); a buyer's own admins set the details that say who they
are (``billing_details_set``), never the tax rate they are charged."""

from __future__ import annotations

import re

from core.db import (
    retry_transaction,
)
from core.errors import InvalidInput
from core.eventstore import (
    NewEvent,
    event_append,
)
from core.models import Organization
from invoicing.models import (
    BillingProfile,
)
from pricing.selectors import BPS

BILLING_PROFILE_STREAM = "billing.profile"
BILLING_PROFILE_SET = "BillingProfileSet"
MAX_ADDRESS_LENGTH = 1000


def _text(value: str, field_name: str, limit: int) -> str:
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidInput(f"{field_name} must be text", details={"field": field_name})
    value = value.strip()
    if len(value) > limit:
        raise InvalidInput(
            f"{field_name} must be at most {limit} characters", details={"field": field_name}
        )
    return value


# VAT numbers of the countries Tandem's buyers come from most, as the EU's VIES and
# HMRC write them (country prefix, then the national number), with an example. A tax
# id that starts with another prefix, or with none (a US EIN, an ABN), is held to the
# general rule.
VAT_FORMATS: dict[str, tuple[str, str]] = {
    "AT": (r"ATU\d{8}", "ATU12345678"),
    "BE": (r"BE[01]\d{9}", "BE0123456789"),
    "DE": (r"DE\d{9}", "DE123456789"),
    "DK": (r"DK\d{8}", "DK12345678"),
    "ES": (r"ES[0-9A-Z]\d{7}[0-9A-Z]", "ESX1234567X"),
    "FI": (r"FI\d{8}", "FI12345678"),
    "FR": (r"FR[0-9A-HJ-NP-Z]{2}\d{9}", "FRXX123456789"),
    "GB": (r"GB(\d{9}|\d{12}|GD\d{3}|HA\d{3})", "GB123456789"),
    "IE": (r"IE\d{7}[A-W][A-I]?|IE\d[A-Z+*]\d{5}[A-W]", "IE1234567T"),
    "IT": (r"IT\d{11}", "IT12345678901"),
    "NL": (r"NL\d{9}B\d{2}", "NL123456789B01"),
    "PL": (r"PL\d{10}", "PL1234567890"),
    "PT": (r"PT\d{9}", "PT123456789"),
    "SE": (r"SE\d{12}", "SE123456789001"),
}
TAX_ID_GENERAL = re.compile(r"[0-9A-Z][0-9A-Z./-]{2,30}[0-9A-Z]")
MAX_LEGAL_NAME_LENGTH = 200


def tax_id_normalize(value: str) -> str:
    """A tax id as invoices print it: upper case, without the spaces people type
    between groups of digits; an ``InvalidInput`` naming ``tax_id`` when it has
    the wrong shape (empty is allowed: not every buyer has one)."""
    text = _text(value, "tax_id", 64).upper().replace(" ", "")
    if not text:
        return ""
    known = VAT_FORMATS.get(text[:2])
    if known is not None and not re.fullmatch(known[0], text):
        raise InvalidInput(
            f"tax_id: {text} is not a {text[:2]} VAT number (e.g. {known[1]})",
            details={"field": "tax_id"},
        )
    if not TAX_ID_GENERAL.fullmatch(text):
        raise InvalidInput(
            "tax_id: 4 to 32 letters and digits (dots, dashes and slashes between them), "
            "e.g. DE123456789 or 12-3456789",
            details={"field": "tax_id"},
        )
    return text


def _required(value: str, field_name: str, limit: int) -> str:
    text = _text(value, field_name, limit)
    if not text:
        raise InvalidInput(f"{field_name} is required", details={"field": field_name})
    return text


@retry_transaction
def billing_details_set(
    *,
    organization: Organization,
    legal_name: str,
    address: str,
    tax_id: str,
    actor: str,
) -> BillingProfile:
    """A buyer's own admins say who their invoices are addressed to: the legal name
    and postal address (both required: an invoice without them is not one a buyer's
    accounts can book) and the tax id, in its country's format where known. The tax
    rate and its label stay what the operator's finance staff set. Recorded as the
    same ``BillingProfileSet`` event as ``billing_profile_set``, so the history of a
    profile is one stream whoever changed it."""
    legal_name = _required(legal_name, "legal_name", MAX_LEGAL_NAME_LENGTH)
    address = _required(address, "address", MAX_ADDRESS_LENGTH)
    tax_id = tax_id_normalize(tax_id)
    current = BillingProfile.objects.select_for_update().filter(organization=organization).first()
    return billing_profile_set(
        organization=organization,
        legal_name=legal_name,
        address=address,
        tax_id=tax_id,
        tax_rate_bps=current.tax_rate_bps if current is not None else 0,
        tax_label=current.tax_label if current is not None else "",
        actor=actor,
    )


@retry_transaction
def billing_profile_set(
    *,
    organization: Organization,
    legal_name: str,
    address: str,
    tax_id: str,
    tax_rate_bps: int,
    tax_label: str = "",
    actor: str,
) -> BillingProfile:
    """Set who an org's invoices are addressed to and the tax rate they charge (basis
    points, 0 to 10,000). Invoices finalized from now on use it; finalized ones keep
    the profile their InvoiceFinalized event recorded. The change is an event, so who
    set which rate when is on record."""
    if (
        isinstance(tax_rate_bps, bool)
        or not isinstance(tax_rate_bps, int)
        or not 0 <= tax_rate_bps <= BPS
    ):
        raise InvalidInput(
            f"tax_rate_bps must be a whole number of basis points from 0 to {BPS} (1,900 = 19%)",
            details={"field": "tax_rate_bps"},
        )
    profile, _ = BillingProfile.objects.select_for_update().get_or_create(organization=organization)
    profile.legal_name = _text(legal_name, "legal_name", 200)
    profile.address = _text(address, "address", MAX_ADDRESS_LENGTH)
    profile.tax_id = _text(tax_id, "tax_id", 64)
    profile.tax_rate_bps = tax_rate_bps
    profile.tax_label = _text(tax_label, "tax_label", 32) or "Tax"
    profile.save()
    stream_id = f"billing_profile:{organization.pk}"
    event_append(
        stream_type=BILLING_PROFILE_STREAM,
        stream_id=stream_id,
        expected_version=None,
        events=[
            NewEvent(
                BILLING_PROFILE_SET,
                {
                    "organization": organization.pk,
                    "legal_name": profile.legal_name,
                    "address": profile.address,
                    "tax_id": profile.tax_id,
                    "tax_rate_bps": profile.tax_rate_bps,
                    "tax_label": profile.tax_label,
                },
            )
        ],
        tenant_id=organization.pk,
        metadata={"actor": actor},
    )
    return profile
