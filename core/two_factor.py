"""Two-factor sign-in, optional per person: a TOTP authenticator (django-otp's TOTP
device) and ten single-use backup codes (its static device).

A person turns it on in two steps: ``two_factor_setup_start`` makes an unconfirmed
TOTP device (its secret goes into their app, by QR code or typed), and
``two_factor_setup_confirm`` confirms it with a code the app shows, proving the app
holds the secret, and hands back the backup codes, shown once. From then on the
sign-in asks for a code after the password (``two_factor_verify``), and turning it
off takes a code too (``two_factor_disable``).

Wrong codes are throttled by django-otp's own rule: after n wrong codes in a row a
device refuses every code for 2^(n-1) seconds (``OTP_TOTP_THROTTLE_FACTOR``, 1 s by
default; ``OTP_STATIC_THROTTLE_FACTOR`` for backup codes). A refusal is recorded
on the device even though the caller then raises: the check runs in its own
transaction, which commits before the error is raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from core.errors import Conflict, InvalidInput, LimitExceeded

BACKUP_CODES = 10
TOTP_NAME = "authenticator"
BACKUP_NAME = "backup codes"
TOTP_CODE = re.compile(r"\d{6}")
BACKUP_CODE = re.compile(r"[a-z2-7]{8}")  # StaticToken.random_token(): 5 bytes, base32


@dataclass(frozen=True, slots=True)
class TwoFactorStatus:
    enabled: bool
    backup_codes_left: int


def two_factor_status(*, user: Any) -> TwoFactorStatus:
    """Whether the person signs in with a code, and how many backup codes are left."""
    enabled = TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    left = StaticToken.objects.filter(device__user=user, device__confirmed=True).count()
    return TwoFactorStatus(enabled=enabled, backup_codes_left=left if enabled else 0)


def two_factor_enabled(*, user: Any) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


@transaction.atomic
def two_factor_setup_start(*, user: Any) -> TOTPDevice:
    """The person's unconfirmed authenticator, made the first time (the same secret
    on a reload, so a QR code already scanned stays good until confirmed)."""
    if two_factor_enabled(user=user):
        raise Conflict("two-factor sign-in is already on; turn it off first to change the app")
    found = (
        TOTPDevice.objects.select_for_update()
        .filter(user=user, confirmed=False)
        .order_by("pk")
        .first()
    )
    return found or TOTPDevice.objects.create(user=user, name=TOTP_NAME, confirmed=False)


def _code_text(code: str) -> str:
    if not isinstance(code, str):
        raise InvalidInput("code must be text", details={"field": "code"})
    return code.strip().replace(" ", "").replace("-", "").lower()


def _refused(device: Device) -> LimitExceeded | None:
    allowed, why = device.verify_is_allowed()
    if allowed:
        return None
    until = why.get("locked_until") if why else None
    wait = f" after {until:%H:%M:%S} UTC" if until is not None else " later"
    return LimitExceeded(
        f"code: too many wrong codes in a row; try again{wait}",
        details={"field": "code", "failures": (why or {}).get("failure_count", 0)},
    )


def _wrong(kind: str) -> InvalidInput:
    return InvalidInput(
        f"code: that is not the current code of your {kind}; check the clock of the "
        "device it runs on, and type the newest code"
        if kind == "authenticator app"
        else "code: that is not one of your unused backup codes",
        details={"field": "code"},
    )


def _check(device: Device, code: str) -> InvalidInput | LimitExceeded | None:
    """Verify ``code`` on ``device`` (locked), committing the throttle's count either
    way; the error to raise, or None when the code was good."""
    with transaction.atomic():
        locked = type(device).objects.select_for_update().get(pk=device.pk)
        refused = _refused(locked)
        if refused is not None:
            return refused
        if locked.verify_token(code):
            return None
    kind = "authenticator app" if isinstance(device, TOTPDevice) else "backup codes"
    return _wrong(kind)


def _backup_codes(user: Any) -> list[str]:
    """Ten new single-use codes, replacing any left."""
    device, _ = StaticDevice.objects.get_or_create(
        user=user, name=BACKUP_NAME, defaults={"confirmed": True}
    )
    device.token_set.all().delete()
    codes = [StaticToken.random_token() for _ in range(BACKUP_CODES)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    return codes


def two_factor_setup_confirm(*, user: Any, code: str) -> list[str]:
    """Turn two-factor sign-in on with a code from the app just set up; the backup
    codes, to show once. InvalidInput (field ``code``) for a wrong code."""
    text = _code_text(code)
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        raise Conflict("start the set-up first: there is no authenticator waiting to be confirmed")
    if not TOTP_CODE.fullmatch(text):
        raise InvalidInput("code: type the 6 digits your app shows", details={"field": "code"})
    error = _check(device, text)
    if error is not None:
        raise error
    with transaction.atomic():
        TOTPDevice.objects.filter(pk=device.pk).update(confirmed=True)
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        return _backup_codes(user)


def two_factor_verify(*, user: Any, code: str) -> Device:
    """The device that accepts ``code``: six digits are the authenticator's, eight
    letters and digits a backup code (used up by this). InvalidInput (field
    ``code``) when wrong, LimitExceeded while wrong codes are throttled."""
    text = _code_text(code)
    if TOTP_CODE.fullmatch(text):
        device: Device | None = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    elif BACKUP_CODE.fullmatch(text):
        device = StaticDevice.objects.filter(user=user, confirmed=True).first()
    else:
        raise InvalidInput(
            "code: type the 6 digits your app shows, or one of your 8-character backup codes",
            details={"field": "code"},
        )
    if device is None:
        raise InvalidInput("code: two-factor sign-in is not on", details={"field": "code"})
    error = _check(device, text)
    if error is not None:
        raise error
    return device


def two_factor_disable(*, user: Any, code: str) -> None:
    """Turn two-factor sign-in off: a current code (or a backup code) first, so a
    session left open on a shared computer cannot."""
    two_factor_verify(user=user, code=code)
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        StaticDevice.objects.filter(user=user).delete()


def two_factor_backup_codes_renew(*, user: Any, code: str) -> list[str]:
    """Ten new backup codes in place of the old ones, for a current code."""
    two_factor_verify(user=user, code=code)
    with transaction.atomic():
        return _backup_codes(user)
