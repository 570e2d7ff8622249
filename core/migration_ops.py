"""Migration operations: raw SQL that differs by database vendor (triggers,
functions), so each migration states its SQL and nothing else; and schema changes
done in place where Django would copy a SQLite table (and lose its triggers)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

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


def sqlite_triggers_restored(migration_module: str) -> migrations.RunPython:
    """The SQLite triggers of an earlier migration (its ``SQLITE_FORWARD``) made
    again where they are missing. SQLite alters a column by copying the table into
    a new one, which leaves the old table's triggers behind: a migration that did
    so is followed by this one."""
    module = importlib.import_module(migration_module)
    statements = [
        statement.replace("CREATE TRIGGER ", "CREATE TRIGGER IF NOT EXISTS ", 1)
        for statement in module.SQLITE_FORWARD
    ]
    return vendor_sql(sqlite=statements)


def index_dropped(app_label: str, model_name: str, field_name: str) -> migrations.RunPython:
    """Drop the index of one field (its column alone), found by introspection, in
    place: unlike ``AlterField(db_index=False)``, which SQLite carries out by copying
    the whole table (and losing its triggers). Pair it, in
    ``SeparateDatabaseAndState``, with that ``AlterField`` as the state operation."""

    def column_indexes(apps, schema_editor) -> tuple[Any, str, list[str]]:
        model = apps.get_model(app_label, model_name)
        column = model._meta.get_field(field_name).column
        with schema_editor.connection.cursor() as cursor:
            found = schema_editor.connection.introspection.get_constraints(
                cursor, model._meta.db_table
            )
        names = [
            name
            for name, about in found.items()
            if about["index"]
            and not about["unique"]
            and not about["primary_key"]
            and about["columns"] == [column]
        ]
        return model, column, names

    def forward(apps, schema_editor) -> None:
        names = column_indexes(apps, schema_editor)[2]
        for name in names:
            schema_editor.execute(f"DROP INDEX {schema_editor.quote_name(name)}")

    def backward(apps, schema_editor) -> None:
        model, column, names = column_indexes(apps, schema_editor)
        if not names:
            table = model._meta.db_table
            name = schema_editor.quote_name(f"{table}_{column}_idx")
            schema_editor.execute(
                f"CREATE INDEX {name} ON {schema_editor.quote_name(table)} "
                f"({schema_editor.quote_name(column)})"
            )

    return migrations.RunPython(forward, backward)


def compression_set(schema_editor, table: str, column: str, method: str) -> None:
    """Compress the column's large values with ``method`` (``lz4``, ``pglz``) from now
    on, where the server has it (lz4: PostgreSQL 14 and later, built with it);
    elsewhere, and on SQLite, nothing changes. Values written before keep theirs."""
    connection = schema_editor.connection
    if connection.vendor != "postgresql" or connection.pg_version < 140000:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND %s = ANY(enumvals)",
            [method],
        )
        if cursor.fetchone() is None:
            return
        cursor.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")
