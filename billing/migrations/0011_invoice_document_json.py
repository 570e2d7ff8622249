"""Invoice documents stored as ``json`` rather than ``jsonb`` (``JSONTextField``): the
canonical text a finalization writes is checked and kept as it is instead of parsed
into jsonb, which was the largest single cost in the server of a month's close (ten
thousand ~4 KB documents; about half the time the server took to store them). The
documents are read whole and never queried by key. Still compressed with lz4 where
the server has it (the type change resets the column's compression).

PostgreSQL only: on SQLite a JSONField is text already."""

from django.db import migrations

import invoicing.models
from core.migration_ops import compression_set


def _retyped(schema_editor, sql_type: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"ALTER TABLE billing_invoice ALTER COLUMN document TYPE {sql_type} "
        f"USING document::{sql_type}"
    )
    compression_set(schema_editor, "billing_invoice", "document", "lz4")


def _json(apps, schema_editor):
    _retyped(schema_editor, "json")


def _jsonb(apps, schema_editor):
    _retyped(schema_editor, "jsonb")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0010_invoice_lines_checked_per_statement"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="invoice",
                    name="document",
                    field=invoicing.models.JSONTextField(blank=True, null=True),
                ),
            ],
            database_operations=[migrations.RunPython(_json, _jsonb)],
        ),
    ]
