"""Two-factor sign-in (core.two_factor): set-up confirmed by a code, codes checked
once each, backup codes used up, wrong codes throttled by django-otp's back-off (and
the count kept though the caller raises), turning it off only with a code. Codes
are computed with django-otp's own TOTP, as an authenticator app would."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from core import selectors, services
from core.errors import Conflict, InvalidInput, LimitExceeded

pytestmark = pytest.mark.django_db


def code(device: TOTPDevice, steps_ahead: int = 0) -> str:
    """The code an app shows now (``steps_ahead`` 30-second steps later)."""
    return f"{totp(device.bin_key, step=device.step, t0=-steps_ahead * device.step):06d}"


def unlock(device: TOTPDevice) -> None:
    """Move the last failure back past its back-off, as time passing would."""
    TOTPDevice.objects.filter(pk=device.pk).update(
        throttling_failure_timestamp=timezone.now() - timedelta(hours=1)
    )


@pytest.fixture
def user():
    return get_user_model().objects.create_user(username="ada@example.com", email="ada@example.com")


@pytest.fixture
def enabled(user) -> tuple[TOTPDevice, list[str]]:
    device = services.two_factor_setup_start(user=user)
    codes = services.two_factor_setup_confirm(user=user, code=code(device))
    device.refresh_from_db()
    return device, codes


def test_set_up_keeps_one_secret_until_confirmed_and_then_hands_out_backup_codes(user):
    first = services.two_factor_setup_start(user=user)
    again = services.two_factor_setup_start(user=user)
    assert first.pk == again.pk and first.key == again.key  # a scanned QR stays good
    assert not selectors.two_factor_enabled(user=user)

    with pytest.raises(InvalidInput) as wrong:
        services.two_factor_setup_confirm(user=user, code="000000")
    assert wrong.value.details == {"field": "code"}
    unlock(first)
    codes = services.two_factor_setup_confirm(user=user, code=code(first))

    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(len(c) == 8 for c in codes)
    status = selectors.two_factor_status(user=user)
    assert status.enabled and status.backup_codes_left == 10
    with pytest.raises(Conflict):
        services.two_factor_setup_start(user=user)


def test_a_code_signs_in_once_and_a_replayed_code_is_refused(user, enabled):
    device, _ = enabled
    next_code = code(device, 1)  # the set-up used this step's

    assert services.two_factor_verify(user=user, code=next_code).pk == device.pk
    with pytest.raises(InvalidInput):
        services.two_factor_verify(user=user, code=next_code)


def test_a_backup_code_works_once_whatever_its_spacing(user, enabled):
    _, codes = enabled
    typed = f" {codes[0][:4].upper()} {codes[0][4:]} "

    services.two_factor_verify(user=user, code=typed)

    assert selectors.two_factor_status(user=user).backup_codes_left == 9
    with pytest.raises(InvalidInput, match="not one of your unused backup codes"):
        services.two_factor_verify(user=user, code=codes[0])


def test_wrong_codes_are_throttled_and_the_count_survives_the_refusal(user, enabled):
    device, _ = enabled

    with pytest.raises(InvalidInput):
        services.two_factor_verify(user=user, code=f"{(int(code(device, 1)) + 1) % 10**6:06d}")
    device.refresh_from_db()
    assert device.throttling_failure_count == 1  # recorded though the caller raised
    with pytest.raises(LimitExceeded) as throttled:
        services.two_factor_verify(user=user, code=code(device, 1))  # right, but too soon
    assert throttled.value.details["field"] == "code"
    assert "too many wrong codes" in throttled.value.message

    unlock(device)
    assert services.two_factor_verify(user=user, code=code(device, 1)).pk == device.pk
    device.refresh_from_db()
    assert device.throttling_failure_count == 0


def test_a_code_of_neither_shape_is_refused_without_counting(user, enabled):
    device, _ = enabled
    with pytest.raises(InvalidInput, match="6 digits"):
        services.two_factor_verify(user=user, code="12")
    device.refresh_from_db()
    assert device.throttling_failure_count == 0


def test_turning_it_off_takes_a_code_and_removes_every_device(user, enabled):
    device, _ = enabled
    with pytest.raises(InvalidInput):
        services.two_factor_disable(user=user, code="abcdefgh")
    assert selectors.two_factor_enabled(user=user)

    services.two_factor_disable(user=user, code=code(device, 1))

    assert not selectors.two_factor_enabled(user=user)
    assert not TOTPDevice.objects.exists() and not StaticToken.objects.exists()


def test_new_backup_codes_replace_the_old_ones(user, enabled):
    device, old = enabled
    new = services.two_factor_backup_codes_renew(user=user, code=code(device, 1))
    assert len(new) == 10 and not set(new) & set(old)
    with pytest.raises(InvalidInput):
        services.two_factor_verify(user=user, code=old[0])
