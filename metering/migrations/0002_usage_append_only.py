"""Usage events are facts: UPDATE and DELETE on metering_usageevent are refused by the
database (the same trigger function as core_event's, from core 0002)."""

from django.db import migrations

from core.migration_ops import vendor_sql

PG_FORWARD = """
CREATE TRIGGER metering_usageevent_append_only
    BEFORE UPDATE OR DELETE ON metering_usageevent
    FOR EACH ROW EXECUTE FUNCTION tandem_refuse_change();
"""
PG_BACKWARD = "DROP TRIGGER IF EXISTS metering_usageevent_append_only ON metering_usageevent;"

SQLITE_FORWARD = [
    """CREATE TRIGGER metering_usageevent_no_update BEFORE UPDATE ON metering_usageevent
       BEGIN SELECT RAISE(ABORT, 'metering_usageevent is append-only: UPDATE refused'); END;""",
    """CREATE TRIGGER metering_usageevent_no_delete BEFORE DELETE ON metering_usageevent
       BEGIN SELECT RAISE(ABORT, 'metering_usageevent is append-only: DELETE refused'); END;""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS metering_usageevent_no_update;",
    "DROP TRIGGER IF EXISTS metering_usageevent_no_delete;",
]


class Migration(migrations.Migration):
    dependencies = [("metering", "0001_initial"), ("core", "0002_event_store_append_only")]
    operations = [
        vendor_sql(
            postgresql=PG_FORWARD,
            postgresql_reverse=PG_BACKWARD,
            sqlite=SQLITE_FORWARD,
            sqlite_reverse=SQLITE_BACKWARD,
        )
    ]
