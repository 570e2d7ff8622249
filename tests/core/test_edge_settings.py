"""HTTPS settings from the environment: on by default when DEBUG is off, each one
settable, a bad value stopping start-up with its name; and a production environment
that `manage.py check --deploy` finds clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_header_pair

ROOT = Path(__file__).resolve().parents[2]
_HTTPS_VARIABLES = (
    "SECURE_SSL_REDIRECT",
    "SECURE_PROXY_SSL_HEADER",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "CSRF_TRUSTED_ORIGINS",
)
_PRINT = (
    "from django.conf import settings as s; print(repr(("
    "s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, "
    "s.SECURE_HSTS_PRELOAD, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
    "s.SECURE_PROXY_SSL_HEADER)))"
)


def _environment(**overrides: str) -> dict[str, str]:
    """The suite's environment without its HTTPS variables (the suite sets
    SECURE_SSL_REDIRECT=0 for itself), with ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k not in _HTTPS_VARIABLES}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return {**env, **overrides}


def _manage(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=_environment(**overrides),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_production_environment_passes_check_deploy_without_a_warning():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY="k7#Qv9!xR2$mZ4@pL8^nW3&tY6*hB1(dF5)gJ0-sA" + "e" * 20,
        ALLOWED_HOSTS="api.example.com",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_without_the_https_settings_check_deploy_warns():
    # what the test above relies on: check --deploy does look at these settings
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY="k7#Qv9!xR2$mZ4@pL8^nW3&tY6*hB1(dF5)gJ0-sA" + "e" * 20,
        SECURE_SSL_REDIRECT="0",
        SECURE_HSTS_SECONDS="0",
    )

    assert result.returncode != 0
    assert "security.W004" in result.stderr + result.stdout
    assert "security.W008" in result.stderr + result.stdout


def _settings(**overrides: str) -> tuple:
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {_PRINT}"],
        cwd=ROOT,
        env={**_environment(**overrides), "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)  # noqa: S307  (our own repr of bools, ints and a tuple)


def test_https_is_on_by_default_when_debug_is_off():
    assert _settings(DEBUG="0") == (True, 31_536_000, True, True, True, True, None)


def test_https_is_off_by_default_in_development():
    assert _settings(DEBUG="1") == (False, 0, False, False, False, False, None)


def test_each_https_setting_comes_from_the_environment():
    values = _settings(
        DEBUG="0",
        SECURE_SSL_REDIRECT="0",
        SECURE_HSTS_SECONDS="3600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="no",
        SECURE_HSTS_PRELOAD="false",
        SESSION_COOKIE_SECURE="off",
        CSRF_COOKIE_SECURE="0",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https",
    )

    assert values == (
        False,
        3600,
        False,
        False,
        False,
        False,
        ("HTTP_X_FORWARDED_PROTO", "https"),
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SECURE_SSL_REDIRECT", "sometimes"),
        ("SECURE_HSTS_SECONDS", "a year"),
        ("SECURE_HSTS_SECONDS", "-1"),
        ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "2"),
        ("SECURE_HSTS_PRELOAD", "maybe"),
        ("SESSION_COOKIE_SECURE", "yes please"),
        ("CSRF_COOKIE_SECURE", "on?"),
        ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto"),
        ("SECURE_PROXY_SSL_HEADER", "X Forwarded Proto: https"),
        ("CSRF_TRUSTED_ORIGINS", "example.com"),
    ],
)
def test_a_bad_https_value_fails_check_naming_the_variable(name, value):
    result = _manage("check", DEBUG="0", **{name: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr


def test_the_proxy_header_is_read_as_djangos_meta_key(monkeypatch):
    monkeypatch.setenv("TLS_HEADER", " X-Forwarded-Proto :  https ")
    assert env_header_pair("TLS_HEADER") == ("HTTP_X_FORWARDED_PROTO", "https")
    monkeypatch.setenv("TLS_HEADER", "")
    assert env_header_pair("TLS_HEADER") is None
    monkeypatch.setenv("TLS_HEADER", ": https")
    with pytest.raises(ImproperlyConfigured, match="TLS_HEADER"):
        env_header_pair("TLS_HEADER")


@pytest.mark.django_db
def test_the_suite_itself_serves_plain_http(client, settings):
    response = client.get("/healthz")

    assert settings.SECURE_SSL_REDIRECT is False
    assert response.status_code != 301


@pytest.mark.django_db
def test_with_the_redirect_on_plain_http_is_sent_to_https_but_healthz_is_not(settings):
    from django.test import Client

    settings.SECURE_SSL_REDIRECT = True

    api = Client().get("/api/v1/organization")
    health = Client().get("/healthz")
    behind_proxy = Client().get("/api/v1/organization", secure=True)

    assert api.status_code == 301
    assert api["Location"].startswith("https://")
    assert health.status_code != 301
    assert behind_proxy.status_code == 401
    assert behind_proxy["Strict-Transport-Security"].startswith("max-age=31536000")
