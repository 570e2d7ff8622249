"""Writes of the shared kernel's tenancy part: organizations, memberships, API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, InvalidInput
from core.models import ApiKey, Membership, Organization

API_KEY_PREFIX = "tdm"
# last_used_at is written at most this often per key, so auth is not a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def org_create(*, name: str, kind: str, is_operator: bool = False) -> Organization:
    name = name.strip()
    if not name:
        raise InvalidInput("name must not be empty", details={"field": "name"})
    if kind not in Organization.Kind.values:
        raise InvalidInput(
            f"kind must be one of {', '.join(Organization.Kind.values)}", details={"field": "kind"}
        )
    try:
        with transaction.atomic():
            return Organization.objects.create(name=name, kind=kind, is_operator=is_operator)
    except IntegrityError:
        if Organization.objects.filter(name=name).exists():
            raise Conflict(f"an organization named {name!r} exists already") from None
        raise Conflict("there is an operator organization already") from None


@transaction.atomic
def membership_create(*, user, organization: Organization, role: str) -> Membership:
    if role not in Membership.Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Membership.Role.values)}")
    membership, _ = Membership.objects.update_or_create(
        user=user, organization=organization, defaults={"role": role}
    )
    return membership


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored


def api_key_create(
    *, organization: Organization, name: str = "default", role: str = "admin"
) -> CreatedApiKey:
    if role not in Membership.Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Membership.Role.values)}")
    prefix = secrets.token_hex(6)
    raw_key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name[:100] or "default",
        role=role,
        prefix=prefix,
        hashed_key=hash_api_key(raw_key),
    )
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    ApiKey.objects.filter(pk=api_key.pk, revoked_at=None).update(revoked_at=timezone.now())
    api_key.refresh_from_db()
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    now = timezone.now()
    last = api_key.last_used_at
    if last is not None and now - last < LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    api_key.last_used_at = now
