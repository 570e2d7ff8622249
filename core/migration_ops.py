"""A migration operation for raw SQL that differs by database vendor (triggers,
functions), so each migration states its SQL and nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import migrations


def vendor_sql(
    *,
    postgresql: str = "",
    postgresql_reverse: str = "",
    sqlite: Sequence[str] = (),
    sqlite_reverse: Sequence[str] = (),
) -> migrations.RunPython:
    """Run ``postgresql`` (one script, may hold ``%`` signs) on PostgreSQL and the
    ``sqlite`` statements (one at a time, as SQLite wants) on SQLite."""

    def run(schema_editor, pg_script: str, sqlite_statements: Sequence[str]) -> None:
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql" and pg_script:
            schema_editor.execute(pg_script, params=None)
        elif vendor == "sqlite":
            for statement in sqlite_statements:
                schema_editor.execute(statement)

    def forward(apps, schema_editor) -> None:
        run(schema_editor, postgresql, sqlite)

    def backward(apps, schema_editor) -> None:
        run(schema_editor, postgresql_reverse, sqlite_reverse)

    return migrations.RunPython(forward, backward)
