"""A buyer's billing profile (legal name, address, tax id and rate), set by its
admins and copied into every invoice finalized after."""

from __future__ import annotations

from core.db import (
    retry_transaction,
)
from core.errors import InvalidInput
from core.eventstore import (
    NewEvent,
    event_append,
    stream_version,
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
        expected_version=stream_version(stream_id),
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
