"""On SQLite, 0004 copied core_event into a new table (dropping an index is a table
copy there), which left the append-only triggers of 0002 behind: they are made
again. Nothing to do on PostgreSQL, which altered the table in place."""

from django.db import migrations

from core.migration_ops import sqlite_triggers_restored


class Migration(migrations.Migration):
    dependencies = [("core", "0004_drop_redundant_indexes")]
    operations = [sqlite_triggers_restored("core.migrations.0002_event_store_append_only")]
