"""The journal's statement-level check (billing 0002) reads the events of the new
postings by a range of positions, and the accounts once per (account, currency).

The check is the same: every entry a statement adds postings to has at least two
postings, one currency, debits equal to credits, an event, and each posting is in
its account's currency. What changes is how it reads the event table. It joined
the new rows to ``core_event`` on the position, and PostgreSQL planned that join
for a batch of a thousand entries as a hash of the whole event table, read in
full by every batch: the ledger's batched writes got slower as the store grew
(37 ms of a 54 ms write at 130,000 events). The events a statement posts to
are the ones it has just appended, whose positions lie together, so the check
now reads only ``position BETWEEN lo AND hi`` of the primary key, however large
the store. The account check runs over the statement's distinct (account,
currency) pairs (a batch among ten accounts has at most ten), not over every
posting joined to the account table.

The diagnosis that words an error is unchanged and runs only when something is
wrong. PostgreSQL only, as 0002.
"""

import importlib

from django.db import migrations

from core.migration_ops import vendor_sql

PG_FORWARD = """
CREATE OR REPLACE FUNCTION billing_postings_balanced() RETURNS trigger AS $$
DECLARE
    bad bigint;
    missing bigint;
    bad_account bigint;
    bad_currency text;
BEGIN
    -- One pass over the new rows grouped by entry (two legs or more, one
    -- currency, debits equal to credits), and whether each entry is an event.
    -- The events a statement posts to are the ones it has just appended, one
    -- position after another: when every position of their range is an event,
    -- so is each entry, and counting them is one index range scan. (No
    -- variables in these statements: PL/pgSQL plans each once per session.)
    SELECT g.bad,
           g.hi - g.lo + 1
           - (SELECT count(*) FROM core_event e WHERE e.position BETWEEN g.lo AND g.hi)
      INTO bad, missing
      FROM (SELECT min(x.entry_position) AS lo, max(x.entry_position) AS hi,
                   min(x.entry_position) FILTER (WHERE x.legs < 2
                                                    OR x.first_currency <> x.last_currency
                                                    OR x.net <> 0) AS bad
              FROM (SELECT n.entry_position, count(*) AS legs,
                           min(n.currency) AS first_currency,
                           max(n.currency) AS last_currency,
                           sum(CASE WHEN n.side = 'D' THEN n.amount_micros
                                    ELSE -n.amount_micros END) AS net
                      FROM new_postings n
                     GROUP BY n.entry_position) x) g;
    IF missing IS NULL THEN
        RETURN NULL;  -- a statement that added no postings
    END IF;
    IF bad IS NULL AND missing > 0 THEN
        -- Gaps in the range (entries of several statements): each one looked up.
        SELECT p INTO bad
          FROM (SELECT DISTINCT n.entry_position AS p FROM new_postings n) d
         WHERE NOT EXISTS (SELECT 1 FROM core_event e WHERE e.position = d.p)
         LIMIT 1;
    END IF;
    -- Each posting in its account's currency, checked once per distinct pair.
    IF bad IS NULL THEN
        SELECT p.account_id, p.currency INTO bad_account, bad_currency
          FROM (SELECT DISTINCT n.account_id, n.currency FROM new_postings n) p
         WHERE NOT EXISTS (SELECT 1 FROM billing_account a
                            WHERE a.id = p.account_id AND a.currency = p.currency)
         LIMIT 1;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        SELECT n.entry_position INTO bad
          FROM new_postings n
         WHERE n.account_id = bad_account AND n.currency = bad_currency
         LIMIT 1;
    END IF;
    -- Something is wrong with entry ``bad``: say what.
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
"""


def _previous_function() -> str:
    """billing 0002's definition of the function (its trigger stays as it is)."""
    script = importlib.import_module("billing.migrations.0002_journal_invariants").PG_FORWARD
    start = script.index("CREATE OR REPLACE FUNCTION billing_postings_balanced()")
    return script[start : script.index("CREATE TRIGGER billing_postings_balanced")]


class Migration(migrations.Migration):
    dependencies = [("ledger", "0002_single_transfer_function")]
    operations = [vendor_sql(postgresql=PG_FORWARD, postgresql_reverse=_previous_function())]
