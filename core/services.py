"""Writes of the shared kernel's tenancy part: organizations, memberships, API keys,
the claims behind ``Idempotency-Key`` (see core.idempotency), and a person's
two-factor sign-in (core.two_factor, re-exported here)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, IdempotencyConflict, InvalidInput
from core.eventstore import NewEvent, event_append
from core.models import ApiKey, IdempotentRequest, Membership, Organization
from core.two_factor import two_factor_backup_codes_renew as two_factor_backup_codes_renew
from core.two_factor import two_factor_disable as two_factor_disable
from core.two_factor import two_factor_setup_confirm as two_factor_setup_confirm
from core.two_factor import two_factor_setup_start as two_factor_setup_start
from core.two_factor import two_factor_verify as two_factor_verify

API_KEY_PREFIX = "tdm"
ORGANIZATION_STREAM = "core.organization"
ORGANIZATION_CREATED = "OrganizationCreated"
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
            organization = Organization.objects.create(
                name=name, kind=kind, is_operator=is_operator
            )
    except IntegrityError:
        if Organization.objects.filter(name=name).exists():
            raise Conflict(
                f"an organization named {name!r} exists already", details={"field": "name"}
            ) from None
        raise Conflict("there is an operator organization already") from None
    # A fact other apps follow (billing grants a new buyer its welcome credits) without
    # core knowing them; appended last, as the event store asks.
    event_append(
        stream_type=ORGANIZATION_STREAM,
        stream_id=f"organization:{organization.pk}",
        expected_version=0,
        events=[
            NewEvent(
                ORGANIZATION_CREATED,
                {"organization": organization.pk, "kind": kind, "is_operator": is_operator},
            )
        ],
        tenant_id=organization.pk,
        metadata={"actor": "system"},
    )
    return organization


@transaction.atomic
def membership_create(*, user, organization: Organization, role: str) -> Membership:
    if role not in Membership.Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Membership.Role.values)}")
    membership, _ = Membership.objects.update_or_create(
        user=user, organization=organization, defaults={"role": role}
    )
    return membership


# --- people: sign-up and the team --------------------------------------------


def _user_model():
    from django.contrib.auth import get_user_model

    return get_user_model()


def normalize_email(email: str) -> str:
    """People sign in with their email, which is their username: one spelling each."""
    return email.strip().lower()


@transaction.atomic
def org_sign_up(*, email: str, password: str, organization_name: str, kind: str) -> Membership:
    """A person and their new organization, with them as its admin. Buyer
    organizations get their welcome credits from billing's follower of
    ``OrganizationCreated`` (pricing.welcome.WelcomeCredits), not from here."""
    email = normalize_email(email)
    if not email:
        raise InvalidInput("email must not be empty", details={"field": "email"})
    User = _user_model()
    if User.objects.filter(username=email).exists():
        raise Conflict(
            f"there is an account for {email} already: sign in, or reset its password",
            details={"field": "email"},
        )
    organization = org_create(name=organization_name, kind=kind)
    user = User.objects.create_user(username=email, email=email, password=password)
    return membership_create(user=user, organization=organization, role=Membership.Role.ADMIN)


@dataclass(frozen=True)
class Invitation:
    membership: Membership
    # True when the person had no account: they choose a password through the link
    # they are mailed. False: an existing account was added and signs in as before.
    new_account: bool


@transaction.atomic
def member_invite(*, organization: Organization, email: str, role: str) -> Invitation:
    """Add a person to ``organization`` by email with ``role``. Someone without an
    account gets one with no usable password; the caller mails them a link to choose
    it (a password-reset token: it expires, works once, and needs no table of pending
    invitations). Someone already a member keeps their membership as it is."""
    email = normalize_email(email)
    if role not in Membership.Role.values:
        raise InvalidInput(
            f"role must be one of {', '.join(Membership.Role.values)}", details={"field": "role"}
        )
    User = _user_model()
    user = User.objects.filter(username=email).first()
    new_account = user is None
    if user is None:
        user = User(username=email, email=email)
        user.set_unusable_password()
        user.save()
    elif Membership.objects.filter(user=user, organization=organization).exists():
        raise Conflict(f"{email} is a member already", details={"field": "email"})
    membership = Membership.objects.create(user=user, organization=organization, role=role)
    return Invitation(membership=membership, new_account=new_account)


def _keep_an_admin(membership: Membership) -> None:
    """Refuse to leave the organization without an admin. The admins' rows are locked
    in a fixed order, so two admins demoting each other at once cannot both pass."""
    admins = list(
        Membership.objects.select_for_update()
        .filter(organization_id=membership.organization_id, role=Membership.Role.ADMIN)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if membership.pk in admins and len(admins) == 1:
        raise Conflict(
            "an organization keeps at least one admin: make someone else admin first",
            details={"field": "role"},
        )


@transaction.atomic
def membership_role_change(*, membership: Membership, role: str) -> Membership:
    if role not in Membership.Role.values:
        raise InvalidInput(
            f"role must be one of {', '.join(Membership.Role.values)}", details={"field": "role"}
        )
    if role != Membership.Role.ADMIN:
        _keep_an_admin(membership)
    Membership.objects.filter(pk=membership.pk).update(role=role)
    membership.role = role
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """Take a person out of an organization (their account stays: it may belong to
    others). The last admin cannot be removed."""
    _keep_an_admin(membership)
    Membership.objects.filter(pk=membership.pk).delete()


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored


def api_key_create(
    *, organization: Organization, name: str = "default", role: str = "admin", scope: str = "org"
) -> CreatedApiKey:
    """A new key, shown once. ``scope="agent"`` is for providers' agent keys (made by
    providers.services.agent_key_create, which binds them to a node)."""
    if role not in Membership.Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Membership.Role.values)}")
    if scope not in ApiKey.Scope.values:
        raise InvalidInput(f"scope must be one of {', '.join(ApiKey.Scope.values)}")
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("name must be 1 to 100 characters", details={"field": "name"})
    # 48 random bits of prefix: a collision is unlikely, not impossible, so try again.
    for _ in range(3):
        prefix = secrets.token_hex(6)
        raw_key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                api_key = ApiKey.objects.create(
                    organization=organization,
                    name=name,
                    role=role,
                    scope=scope,
                    prefix=prefix,
                    hashed_key=hash_api_key(raw_key),
                )
        except IntegrityError:
            continue
        return CreatedApiKey(api_key=api_key, raw_key=raw_key)
    raise Conflict("could not allocate a unique API key prefix; try again")


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; revoking a revoked key keeps the first revocation time."""
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


# --- Idempotency-Key claims -------------------------------------------------

# An unfinished claim older than this belongs to a request whose process died (a
# gunicorn worker killed on timeout, a deploy): a retry may take it over. Taking over
# is safe even when the first request is only slow, because completing a claim is
# fenced on ``created_at`` (see idempotent_request_complete).
IDEMPOTENCY_CLAIM_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class IdempotencyClaim:
    """The outcome of claiming a key: either ours to run (``replay`` is None), or the
    stored first response to send back again."""

    request: IdempotentRequest
    replay: tuple[int, Any] | None = None  # (status code, JSON body)


def idempotent_request_claim(
    *,
    organization: Organization,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    now: datetime | None = None,
) -> IdempotencyClaim:
    """Claim ``key`` for one run of a request, in its own short transaction.

    The unique (organization, key) constraint decides between concurrent duplicates:
    exactly one insert wins; the others see its row and get the stored response, a
    409 while it is unfinished, or a 422 when their request differs from the first.
    """
    for _ in range(3):
        now = now or timezone.now()
        try:
            with transaction.atomic():
                claimed = IdempotentRequest.objects.create(
                    organization=organization,
                    key=key,
                    method=method,
                    path=path[:500],
                    request_hash=request_hash,
                )
            return IdempotencyClaim(request=claimed)
        except IntegrityError:
            pass
        existing = IdempotentRequest.objects.filter(organization=organization, key=key).first()
        if existing is None:
            continue  # released between our insert and our read: try again
        if existing.request_hash != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request "
                f"({existing.method} {existing.path}); use a new key for a new request",
                details={"header": "Idempotency-Key"},
            )
        if existing.completed_at is not None and existing.status_code is not None:
            return IdempotencyClaim(
                request=existing, replay=(existing.status_code, existing.response_body)
            )
        if existing.created_at < now - IDEMPOTENCY_CLAIM_TIMEOUT:
            taken = IdempotentRequest.objects.filter(
                pk=existing.pk, completed_at=None, created_at=existing.created_at
            ).update(created_at=now)
            if taken:
                existing.created_at = now
                return IdempotencyClaim(request=existing)
        raise Conflict(
            "a request with this Idempotency-Key is still in progress",
            details={"header": "Idempotency-Key"},
        )
    raise Conflict(
        "a request with this Idempotency-Key is still in progress",
        details={"header": "Idempotency-Key"},
    )


def idempotent_request_complete(
    *, claim: IdempotentRequest, status_code: int, response_body: Any
) -> bool:
    """Store the final response. False when the claim was taken over meanwhile (this
    run was presumed dead): the caller must then not let its effects stand."""
    updated = IdempotentRequest.objects.filter(
        pk=claim.pk, completed_at=None, created_at=claim.created_at
    ).update(status_code=status_code, response_body=response_body, completed_at=timezone.now())
    return updated == 1


def idempotent_request_release(*, claim: IdempotentRequest) -> None:
    """Give the key back after a failed run, so that a retry can run."""
    with transaction.atomic():
        IdempotentRequest.objects.filter(
            pk=claim.pk, completed_at=None, created_at=claim.created_at
        ).delete()
