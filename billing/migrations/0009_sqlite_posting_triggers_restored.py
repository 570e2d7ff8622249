"""On SQLite, 0003 copied billing_posting into a new table (dropping an index is a
table copy there), which left the append-only triggers of 0002 behind: they are
made again. Nothing to do on PostgreSQL, which altered the table in place."""

from django.db import migrations

from core.migration_ops import sqlite_triggers_restored


class Migration(migrations.Migration):
    dependencies = [("billing", "0008_drop_redundant_invoice_indexes")]
    operations = [sqlite_triggers_restored("billing.migrations.0002_journal_invariants")]
