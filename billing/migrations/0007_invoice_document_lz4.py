"""Invoice documents (~4 KB of JSON each, past PostgreSQL's 2 KB TOAST threshold) are
compressed with lz4 rather than pglz: a month's close writes one per buyer, and lz4
compresses them about three times faster (and decompresses faster for every read).
Only where the server was built with lz4 (PostgreSQL 14 and later); elsewhere, and on
SQLite, nothing changes. Rows written before keep their pglz values."""

from django.db import migrations

from core.migration_ops import compression_set


def _lz4(apps, schema_editor):
    compression_set(schema_editor, "billing_invoice", "document", "lz4")


def _pglz(apps, schema_editor):
    compression_set(schema_editor, "billing_invoice", "document", "pglz")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_finance_exports"),
    ]

    operations = [migrations.RunPython(_lz4, _pglz)]
