"""The embedded default: SQLite and an in-process broker, no server at all.
(The rest of the suite runs on PostgreSQL; this file is about SQLite itself.)"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, var_dir: Path) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "DRAMATIQ_BROKER_URL", "REDIS_URL", "SECRET_KEY"}
    }
    env.update(DEBUG="1", TANDEM_VAR_DIR=str(var_dir))
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_loads_on_sqlite_twice_and_balances_replay(tmp_path):
    # given a fresh SQLite database
    assert manage("migrate", "--noinput", var_dir=tmp_path).returncode == 0
    assert (tmp_path / "tandem.sqlite3").exists()
    # when the demo loads twice (make run does it on every start)
    first = manage("demo", var_dir=tmp_path)
    second = manage("demo", var_dir=tmp_path)
    # then both runs succeed, print fresh keys, and the books replay exactly
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    keys = [line.split()[-1] for line in first.stdout.splitlines() if "tdm_" in line]
    assert len(keys) == 3 and all(key.startswith("tdm_") for key in keys)
    rebuilt = manage("rebuild_balances", var_dir=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "0 rows differed" in rebuilt.stdout, rebuilt.stdout
    check = manage("check", "--fail-level", "WARNING", var_dir=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    # and the facts it wrote (events, postings, usage) cannot be changed
    with sqlite3.connect(tmp_path / "tandem.sqlite3") as db:
        for table in APPEND_ONLY:
            assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
            column = db.execute(f"PRAGMA table_info({table})").fetchone()[1]
            for statement in (f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}"):
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    db.execute(statement)


APPEND_ONLY = ("core_event", "billing_posting", "metering_usageevent")


def test_the_append_only_tables_keep_their_triggers_after_every_migration(tmp_path):
    # given a fresh SQLite database, migrated all the way (some migrations altered
    # these tables, which SQLite does by copying them into new ones)
    assert manage("migrate", "--noinput", var_dir=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "tandem.sqlite3") as db:
        found = db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        triggers = {name for (name,) in found}
    # then every append-only table has its two triggers
    for table in APPEND_ONLY:
        assert {f"{table}_no_update", f"{table}_no_delete"} <= triggers, table
