"""Invoice lines name their invoice, and line links their line, checked once per
statement rather than once per row.

A month's close writes ~60,000 lines and ~100,000 links by COPY; PostgreSQL's
foreign keys checked each row with a query of its own (and a share lock on the
parent row), which cost the close more than storing the rows. Instead, as the
journal's postings are checked (0002), a statement-level trigger over the new rows
finds any that name no parent, in one join, and a trigger on the parents refuses a
delete that would leave children behind. Children are written only by the
transaction that holds their parent (it made it, or locked it to replace its
lines), so the share locks the per-row checks took had nothing to guard.

PostgreSQL only: SQLite keeps its foreign keys (the embedded default writes a demo's
worth of lines)."""

import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import vendor_sql

# child table, its column, parent table, the trigger's name stem
REFERENCES = (
    ("billing_invoiceline", "invoice_id", "billing_invoice", "billing_invoiceline_invoice"),
    ("billing_invoicelineentry", "line_id", "billing_invoiceline", "billing_invoicelineentry_line"),
)


def _forward(child: str, column: str, parent: str, name: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {name}_exists() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n
                WHERE NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = n.{column})) THEN
        RAISE EXCEPTION '{child}.{column} names a row of {parent} that does not exist'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER {name}_exists_insert AFTER INSERT ON {child}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {name}_exists();
CREATE TRIGGER {name}_exists_update AFTER UPDATE ON {child}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {name}_exists();

CREATE OR REPLACE FUNCTION {name}_kept() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM old_rows o JOIN {child} c ON c.{column} = o.id) THEN
        RAISE EXCEPTION 'rows of {child} still name the deleted {parent} rows'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER {name}_kept AFTER DELETE ON {parent}
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {name}_kept();

DO $$
DECLARE
    found text;
BEGIN
    FOR found IN
        SELECT c.conname FROM pg_constraint c
         WHERE c.conrelid = '{child}'::regclass AND c.contype = 'f'
           AND c.confrelid = '{parent}'::regclass
    LOOP
        EXECUTE format('ALTER TABLE {child} DROP CONSTRAINT %I', found);
    END LOOP;
END;
$$;
"""


def _backward(child: str, column: str, parent: str, name: str) -> str:
    return f"""
DROP TRIGGER IF EXISTS {name}_exists_insert ON {child};
DROP TRIGGER IF EXISTS {name}_exists_update ON {child};
DROP TRIGGER IF EXISTS {name}_kept ON {parent};
DROP FUNCTION IF EXISTS {name}_exists();
DROP FUNCTION IF EXISTS {name}_kept();
ALTER TABLE {child} ADD CONSTRAINT {name}_fk FOREIGN KEY ({column}) REFERENCES {parent} (id)
    DEFERRABLE INITIALLY DEFERRED;
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0009_sqlite_posting_triggers_restored")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="invoiceline",
                    name="invoice",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="lines",
                        to="billing.invoice",
                    ),
                ),
                migrations.AlterField(
                    model_name="invoicelineentry",
                    name="line",
                    field=models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="entries",
                        to="billing.invoiceline",
                    ),
                ),
            ],
            database_operations=[
                vendor_sql(
                    postgresql="".join(_forward(*reference) for reference in REFERENCES),
                    postgresql_reverse="".join(
                        _backward(*reference) for reference in reversed(REFERENCES)
                    ),
                )
            ],
        )
    ]
