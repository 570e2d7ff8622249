"""Reading settings from the environment, in one place.

Every value is checked when the process starts; a bad one raises
``ImproperlyConfigured`` naming the variable, so a typo never turns into a
surprise at three in the morning.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def redact_url(raw: str) -> str:
    """``raw`` with any password replaced, fit for an error message or a log line."""
    try:
        parts = urlsplit(raw)
        if parts.password is None:
            return raw
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return "<unparseable URL>"


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_amount(name: str, default: str) -> int:
    """A non-negative amount of money as decimal text (``"20.00"``), in micro-units."""
    from decimal import Decimal, InvalidOperation

    raw = os.environ.get(name, default).strip()
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a decimal amount (e.g. 20.00)") from None
    micros = value * 1_000_000
    if not value.is_finite() or value < 0 or micros != micros.to_integral_value():
        raise ImproperlyConfigured(
            f"{name}={raw!r} must be a non-negative amount with at most 6 decimals"
        )
    return int(micros)


def env_int_list(name: str, default: list[int]) -> list[int]:
    """Comma-separated positive integers, ascending (``1,3,5``)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        values = [int(item) for item in raw.split(",") if item.strip()]
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a list of integers (1,3,5)") from None
    if not values or any(v <= 0 for v in values) or values != sorted(values):
        raise ImproperlyConfigured(f"{name}={raw!r} must be positive integers in ascending order")
    return values


def env_database(name: str, default: str) -> dict[str, Any]:
    raw = os.environ.get(name) or default
    shown = redact_url(raw)
    try:
        config = dj_database_url.parse(raw, conn_max_age=0)
    except (ValueError, KeyError):
        raise ImproperlyConfigured(f"{name}={shown!r} is not a database URL") from None
    engine = config.get("ENGINE", "")
    if engine not in {"django.db.backends.postgresql", "django.db.backends.sqlite3"}:
        raise ImproperlyConfigured(
            f"{name}={shown!r}: only postgres:// and sqlite:// databases are supported"
        )
    return dict(config)


def env_url(name: str, default: str, *, schemes: set[str]) -> str:
    raw = os.environ.get(name, default)
    if not raw:
        return raw
    try:
        scheme = urlsplit(raw).scheme
    except ValueError:
        scheme = ""
    if scheme not in schemes:
        allowed = ", ".join(sorted(f"{s}://" for s in schemes))
        raise ImproperlyConfigured(f"{name}={redact_url(raw)!r}: scheme must be one of {allowed}")
    return raw


def env_header_pair(name: str) -> tuple[str, str] | None:
    """``Header-Name: value`` (``X-Forwarded-Proto: https``) as Django's ``META`` key and
    the value (``("HTTP_X_FORWARDED_PROTO", "https")``); None when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    header, _, value = raw.partition(":")
    header, value = header.strip(), value.strip()
    if (
        not header
        or not value
        or not header.isascii()
        or not header.replace("-", "").replace("_", "").isalnum()
    ):
        raise ImproperlyConfigured(
            f"{name}={raw!r} must be a header and the value it carries over TLS, "
            "e.g. 'X-Forwarded-Proto: https'"
        )
    return "HTTP_" + header.upper().replace("-", "_"), value
