"""``core_event_append_lock()``: takes the event store's append lock from inside a
statement, so a writer can lock and insert in one round trip (see
core.eventstore.EVENTS_INSERT_CTE). PostgreSQL only."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION core_event_append_lock() RETURNS boolean AS $$
BEGIN
    LOCK TABLE core_event IN EXCLUSIVE MODE;
    RETURN true;
END;
$$ LANGUAGE plpgsql VOLATILE;
"""
BACKWARD = "DROP FUNCTION IF EXISTS core_event_append_lock();"


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("core", "0002_event_store_append_only")]
    operations = [migrations.RunPython(forward, backward)]
