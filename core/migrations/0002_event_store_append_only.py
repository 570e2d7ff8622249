"""Events are facts: UPDATE and DELETE on core_event are refused by the database.

TRUNCATE is left to operators (and to the test runner's flush); production
grants the application role no TRUNCATE privilege.
"""

from django.db import migrations

from core.migration_ops import vendor_sql

PG_FORWARD = """
CREATE OR REPLACE FUNCTION tandem_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER core_event_append_only
    BEFORE UPDATE OR DELETE ON core_event
    FOR EACH ROW EXECUTE FUNCTION tandem_refuse_change();
"""
PG_BACKWARD = "DROP TRIGGER IF EXISTS core_event_append_only ON core_event;"

SQLITE_FORWARD = [
    """CREATE TRIGGER core_event_no_update BEFORE UPDATE ON core_event
       BEGIN SELECT RAISE(ABORT, 'core_event is append-only: UPDATE refused'); END;""",
    """CREATE TRIGGER core_event_no_delete BEFORE DELETE ON core_event
       BEGIN SELECT RAISE(ABORT, 'core_event is append-only: DELETE refused'); END;""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS core_event_no_update;",
    "DROP TRIGGER IF EXISTS core_event_no_delete;",
]


class Migration(migrations.Migration):
    dependencies = [("core", "0001_initial")]
    operations = [
        vendor_sql(
            postgresql=PG_FORWARD,
            postgresql_reverse=PG_BACKWARD,
            sqlite=SQLITE_FORWARD,
            sqlite_reverse=SQLITE_BACKWARD,
        )
    ]
