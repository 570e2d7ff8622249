"""``billing_single_transfer``: one journal entry posted by the server in one call
(``ledger.single_transfer`` says why and which rule it must equal).

It locks the legs' balance rows in account order, and posts only when the plain
engine would: the transfer id is new, every account exists in the entry's
currency, and no leg takes an account with a limit past it (the rule of
``ledger.projection.BalanceState.breaks_limit``). Then it writes the event, the
postings and the balances and returns the event's position. Otherwise it writes
nothing and returns NULL: the caller runs the plain engine, which gives the
replay or the rejection.

PostgreSQL only; nothing on SQLite, where the plain engine does all the work."""

from django.db import migrations

from core.migration_ops import vendor_sql

PG_FORWARD = """
CREATE OR REPLACE FUNCTION billing_single_transfer(
    p_stream_type text, p_stream_id text, p_type text, p_payload jsonb, p_metadata jsonb,
    p_recorded_at timestamptz
) RETURNS bigint AS $$
DECLARE
    v_currency text := p_payload->>'currency';
    v_legs bigint;
    v_found bigint;
    v_refused boolean;
    v_position bigint;
BEGIN
    -- The plain engine's locks, in its order (balances by account id), and its
    -- reading of the locked rows: the newest versions of the balances, with
    -- their accounts. The legs are the payload's: [account, "D" | "C", amount].
    -- Any leg the plain engine would refuse: an unknown account (or one without
    -- its balance row), another currency, or a limit broken by this leg
    -- (BalanceState.breaks_limit: available after < -limit and lower than before).
    WITH legs AS (
        SELECT (l->>0)::bigint AS account_id, l->>1 AS side, (l->>2)::bigint AS amount
          FROM jsonb_array_elements(p_payload->'legs') AS l
    ), locked AS (
        SELECT b.account_id, a.currency, a.normal_side, a.overdraft_limit_micros AS lim,
               CASE WHEN a.normal_side = 'C'
                    THEN b.credits_posted - b.debits_posted - b.debits_pending
                    ELSE b.debits_posted - b.credits_posted - b.credits_pending
               END AS available
          FROM billing_balance b JOIN billing_account a ON a.id = b.account_id
         WHERE b.account_id IN (SELECT account_id FROM legs)
         ORDER BY b.account_id
           FOR UPDATE OF b
    )
    SELECT (SELECT count(*) FROM legs), count(k.account_id),
           coalesce(bool_or(k.currency <> v_currency
                            OR (k.lim IS NOT NULL AND v.delta < 0
                                AND k.available + v.delta < -k.lim)), false)
      INTO v_legs, v_found, v_refused
      FROM legs l
      JOIN locked k ON k.account_id = l.account_id
     CROSS JOIN LATERAL (
         SELECT CASE WHEN k.normal_side = l.side THEN l.amount ELSE -l.amount END AS delta
     ) v;
    IF v_found < v_legs OR v_refused THEN
        RETURN NULL;  -- a rejection: the plain engine words it
    END IF;
    -- Read after the locks (a statement of its own: a fresh snapshot), so a
    -- duplicate committed by a writer waited for above is seen here.
    PERFORM 1 FROM core_event WHERE stream_id = p_stream_id AND version = 1;
    IF FOUND THEN
        RETURN NULL;  -- a replay or a reused id: the plain engine answers
    END IF;

    -- The event (its insert takes the event store's append lock, held to the
    -- commit), its postings and the balances, in one statement.
    WITH ev AS (
        INSERT INTO core_event (tenant_id, stream_type, stream_id, version, type,
                                schema_version, payload, metadata, idempotency_key,
                                recorded_at)
        VALUES (NULL, p_stream_type, p_stream_id, 1, p_type, 1, p_payload, p_metadata, NULL,
                p_recorded_at)
        RETURNING position
    ), legs AS (
        SELECT (l->>0)::bigint AS account_id, l->>1 AS side, (l->>2)::bigint AS amount, ord
          FROM jsonb_array_elements(p_payload->'legs') WITH ORDINALITY AS x(l, ord)
    ), po AS (
        INSERT INTO billing_posting (entry_position, account_id, currency, side,
                                     amount_micros, recorded_at)
        SELECT ev.position, legs.account_id, v_currency, legs.side, legs.amount, p_recorded_at
          FROM ev CROSS JOIN legs
         ORDER BY legs.ord
    ), ba AS (
        UPDATE billing_balance b
           SET debits_posted = b.debits_posted
                               + CASE WHEN legs.side = 'D' THEN legs.amount ELSE 0 END,
               credits_posted = b.credits_posted
                                + CASE WHEN legs.side = 'C' THEN legs.amount ELSE 0 END,
               position = ev.position
          FROM ev CROSS JOIN legs
         WHERE b.account_id = legs.account_id
    )
    SELECT position INTO v_position FROM ev;
    RETURN v_position;
END;
$$ LANGUAGE plpgsql;
"""
PG_BACKWARD = """
DROP FUNCTION IF EXISTS billing_single_transfer(text, text, text, jsonb, jsonb, timestamptz);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("ledger", "0001_initial"),
        ("core", "0003_event_append_order"),
    ]
    operations = [vendor_sql(postgresql=PG_FORWARD, postgresql_reverse=PG_BACKWARD)]
