"""Reads of the shared kernel's tenancy part."""

from __future__ import annotations

import hmac
from functools import cache

from django.db import connection, models
from django.db.models import QuerySet

from core.db import as_utc, server_cursor
from core.errors import NotFound
from core.models import ApiKey, Membership, Organization
from core.services import API_KEY_PREFIX, hash_api_key
from core.two_factor import TwoFactorStatus as TwoFactorStatus
from core.two_factor import two_factor_enabled as two_factor_enabled
from core.two_factor import two_factor_status as two_factor_status


def api_key_for_secret(*, raw_key: str) -> ApiKey | None:
    """The live key whose secret this is, compared in constant time; None otherwise.

    Every API request runs this, so it is one hand-written statement rather than a
    queryset: compiling the ORM's join costs more than PostgreSQL takes to answer it.
    On PostgreSQL it is prepared once per connection (planning it cost more than
    running it). Nothing about the key is cached: a revoked key fails at once.
    """
    parts = raw_key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not parts[1]:
        return None
    if connection.vendor == "postgresql":
        with connection.wrap_database_errors:
            cursor = server_cursor()
            cursor.execute(_api_key_sql(), [parts[1]], prepare=True)
            row = cursor.fetchone()
    else:
        with connection.cursor() as cursor:
            cursor.execute(_api_key_sql(), [parts[1]])
            row = cursor.fetchone()
    if row is None:
        return None
    key_fields, org_fields = _api_key_columns()
    if connection.vendor != "postgresql":
        row = _timestamps_as_utc(row)
    api_key = ApiKey.from_db(connection.alias, key_fields, row[: len(key_fields)])
    if not hmac.compare_digest(api_key.hashed_key, hash_api_key(raw_key)):
        return None
    api_key.organization = Organization.from_db(
        connection.alias, org_fields, row[len(key_fields) :]
    )
    return api_key


def _timestamps_as_utc(row: tuple) -> tuple:
    # A raw cursor skips Django's converters: SQLite gives naive timestamps back.
    return tuple(
        as_utc(v) if i in _timestamp_indexes() and v is not None else v for i, v in enumerate(row)
    )


@cache
def _timestamp_indexes() -> frozenset[int]:
    fields = [*ApiKey._meta.concrete_fields, *Organization._meta.concrete_fields]
    return frozenset(i for i, f in enumerate(fields) if isinstance(f, models.DateTimeField))


@cache
def _api_key_columns() -> tuple[list[str], list[str]]:
    return (
        [f.attname for f in ApiKey._meta.concrete_fields],
        [f.attname for f in Organization._meta.concrete_fields],
    )


@cache
def _api_key_sql() -> str:
    key, org = ApiKey._meta, Organization._meta
    columns = [f"k.{f.column}" for f in key.concrete_fields]
    columns += [f"o.{f.column}" for f in org.concrete_fields]
    return (
        f"SELECT {', '.join(columns)} FROM {key.db_table} k "
        f"JOIN {org.db_table} o ON o.{org.pk.column} = k.{key.get_field('organization').column} "
        "WHERE k.prefix = %s AND k.revoked_at IS NULL LIMIT 1"
    )


def membership_for_user(*, user, organization_id: int | None) -> Membership | None:
    """The user's membership of ``organization_id`` (an id already bounded by the
    caller: core.converters), or of their one organization when None."""
    memberships = Membership.objects.select_related("organization").filter(user=user)
    if organization_id is not None:
        return memberships.filter(organization_id=organization_id).first()
    found = list(memberships[:2])
    return found[0] if len(found) == 1 else None


def api_keys_for_org(*, organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization)


def api_key_get(*, organization: Organization, api_key_id: int) -> ApiKey:
    """One of ``organization``'s keys; another organization's is as good as absent."""
    api_key = ApiKey.objects.filter(organization=organization, pk=api_key_id).first()
    if api_key is None:
        raise NotFound(f"no API key {api_key_id} in your organization")
    return api_key


def memberships_for_user(*, user) -> QuerySet[Membership]:
    """The user's memberships, oldest first, each with its organization."""
    return Membership.objects.select_related("organization").filter(user=user).order_by("pk")


def memberships_for_org(*, organization: Organization) -> QuerySet[Membership]:
    """The organization's members, oldest first, each with its user."""
    return (
        Membership.objects.select_related("user").filter(organization=organization).order_by("pk")
    )


def membership_get(*, organization: Organization, membership_id: int) -> Membership:
    """One of ``organization``'s memberships; another organization's is as good as absent."""
    membership = memberships_for_org(organization=organization).filter(pk=membership_id).first()
    if membership is None:
        raise NotFound(f"no member {membership_id} in your organization")
    return membership
