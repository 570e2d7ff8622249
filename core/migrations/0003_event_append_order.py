"""Positions in commit order, enforced by the database.

Every INSERT into core_event (a plain INSERT, an INSERT inside a bigger
statement, a COPY) first fires this statement-level trigger, which takes the
event store's append lock: a transaction-scoped advisory lock, held until the
inserting transaction commits or rolls back. The trigger fires before the
statement produces its first row, so before any position is drawn from the
sequence: positions are handed out one committing transaction at a time, and a
follower reading by position never skips a row that commits later.

An advisory lock rather than ``LOCK TABLE … IN EXCLUSIVE MODE``: an INSERT holds
ROW EXCLUSIVE on its table from the start of the statement, and upgrading to
EXCLUSIVE inside it deadlocks two concurrent inserters. The advisory lock
conflicts with nothing but itself; readers are never blocked. PostgreSQL only
(SQLite has one writer at a time anyway).
"""

from django.db import migrations

from core.migration_ops import vendor_sql

FORWARD = """
CREATE OR REPLACE FUNCTION core_event_append_lock() RETURNS trigger AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('core_event append'));
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER core_event_append_lock
    BEFORE INSERT ON core_event
    FOR EACH STATEMENT EXECUTE FUNCTION core_event_append_lock();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS core_event_append_lock ON core_event;
DROP FUNCTION IF EXISTS core_event_append_lock();
"""


class Migration(migrations.Migration):
    dependencies = [("core", "0002_event_store_append_only")]
    operations = [vendor_sql(postgresql=FORWARD, postgresql_reverse=BACKWARD)]
