"""Sites: where a provider's nodes stand (a region, a country)."""

from __future__ import annotations

from django.db import transaction

from core.models import Organization
from core.validation import field_error
from providers.models import Site


@transaction.atomic
def site_create(*, organization: Organization, name: str, region: str, country: str) -> Site:
    if Site.objects.filter(organization=organization, name=name).exists():
        raise field_error("name", f"your organization already has a site named {name!r}")
    return Site.objects.create(
        organization=organization, name=name, region=region, country=country.upper()
    )
