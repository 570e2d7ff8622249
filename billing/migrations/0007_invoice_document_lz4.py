"""Invoice documents (~4 KB of JSON each, past PostgreSQL's 2 KB TOAST threshold) are
compressed with lz4 rather than pglz: a month's close writes one per buyer, and lz4
compresses them about three times faster (and decompresses faster for every read).
Only where the server was built with lz4 (PostgreSQL 14 and later); elsewhere, and on
SQLite, nothing changes. Rows written before keep their pglz values."""

from django.db import migrations


def _lz4(apps, schema_editor, method="lz4"):
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
        cursor.execute(
            f"ALTER TABLE billing_invoice ALTER COLUMN document SET COMPRESSION {method}"
        )


def _pglz(apps, schema_editor):
    _lz4(apps, schema_editor, method="pglz")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_finance_exports"),
    ]

    operations = [migrations.RunPython(_lz4, _pglz)]
