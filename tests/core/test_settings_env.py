"""Bad environment values stop the process at start-up, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def manage_check(**overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **overrides}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_test_environment_itself_passes():
    result = manage_check()

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("DEBUG", "maybe"),
        ("DRAMATIQ_BROKER_URL", "http://x"),
        ("REDIS_URL", "memcached://x"),
        ("API_RATE_LIMIT_PER_MINUTE", "lots"),
        ("MAX_REQUEST_BYTES", "10"),
        ("TANDEM_CURRENCY", "BTC"),
        ("MARKETPLACE_BILLING_WINDOW_SECONDS", "59"),
        ("TANDEM_BLOB_STORE", "ftp"),
        ("BLOB_S3_ENDPOINT_URL", "ftp://storage.example"),
    ],
)
def test_a_bad_value_fails_check_naming_the_variable(name, value):
    result = manage_check(**{name: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr


def test_a_bad_database_url_does_not_print_its_password():
    result = manage_check(DATABASE_URL="mysql://tandem:hunter2@db.example/tandem")

    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"TANDEM_BLOB_STORE": "s3", "BLOB_S3_BUCKET": ""}, "BLOB_S3_BUCKET"),
        ({"BLOB_S3_ACCESS_KEY_ID": "AKIA1", "BLOB_S3_SECRET_ACCESS_KEY": ""}, "BLOB_S3_SECRET"),
    ],
)
def test_an_incomplete_s3_blob_store_fails_check(overrides, named):
    result = manage_check(**overrides)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr
