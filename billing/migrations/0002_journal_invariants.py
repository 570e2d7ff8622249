"""The database keeps the journal honest, not only Python:

- postings are append-only (UPDATE and DELETE refused);
- every statement that adds postings must leave each entry it touches with at
  least two postings, one currency, debits equal to credits, and each posting
  in its account's currency (a statement-level trigger over the new rows, so a
  batch of thousands of entries is checked in one pass);
- balances may never hold negative counters (a CHECK in 0001).
"""

from django.db import migrations

from core.migration_ops import vendor_sql

PG_FORWARD = """
CREATE TRIGGER billing_posting_append_only
    BEFORE UPDATE OR DELETE ON billing_posting
    FOR EACH ROW EXECUTE FUNCTION tandem_refuse_change();

CREATE OR REPLACE FUNCTION billing_postings_balanced() RETURNS trigger AS $$
DECLARE
    bad bigint;
BEGIN
    -- One pass over the new rows on the happy path; the slow diagnosis below
    -- runs only when something is wrong.
    SELECT n.entry_position INTO bad
      FROM new_postings n
      LEFT JOIN billing_account a ON a.id = n.account_id
      LEFT JOIN core_event e ON e.position = n.entry_position
     GROUP BY n.entry_position
    HAVING count(*) < 2
        OR count(DISTINCT n.currency) > 1
        OR sum(CASE WHEN n.side = 'D' THEN n.amount_micros ELSE -n.amount_micros END) <> 0
        OR bool_or(a.id IS NULL OR a.currency <> n.currency)
        OR bool_or(e.position IS NULL)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM new_postings n WHERE n.entry_position = bad
                  AND NOT EXISTS (SELECT 1 FROM billing_account a WHERE a.id = n.account_id))
    THEN
        RAISE EXCEPTION 'journal entry % names an account that does not exist', bad
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core_event e WHERE e.position = bad) THEN
        RAISE EXCEPTION 'journal entry % is not an event', bad
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_postings n JOIN billing_account a ON a.id = n.account_id
                WHERE n.entry_position = bad AND a.currency <> n.currency) THEN
        RAISE EXCEPTION 'journal entry % posts to an account of another currency', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'journal entry % does not balance', bad
        USING ERRCODE = 'check_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_postings_balanced
    AFTER INSERT ON billing_posting
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION billing_postings_balanced();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS billing_postings_balanced ON billing_posting;
DROP FUNCTION IF EXISTS billing_postings_balanced();
DROP TRIGGER IF EXISTS billing_posting_append_only ON billing_posting;
"""
SQLITE_FORWARD = [
    """CREATE TRIGGER billing_posting_no_update BEFORE UPDATE ON billing_posting
       BEGIN SELECT RAISE(ABORT, 'billing_posting is append-only: UPDATE refused'); END;""",
    """CREATE TRIGGER billing_posting_no_delete BEFORE DELETE ON billing_posting
       BEGIN SELECT RAISE(ABORT, 'billing_posting is append-only: DELETE refused'); END;""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS billing_posting_no_update;",
    "DROP TRIGGER IF EXISTS billing_posting_no_delete;",
]


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0001_initial"),
        ("core", "0002_event_store_append_only"),
    ]
    operations = [
        vendor_sql(
            postgresql=PG_FORWARD,
            postgresql_reverse=PG_BACKWARD,
            sqlite=SQLITE_FORWARD,
            sqlite_reverse=SQLITE_BACKWARD,
        )
    ]
