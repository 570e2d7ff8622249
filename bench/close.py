"""Closing a month on PostgreSQL: ``billing.invoicing.period_close`` (finalize=True:
every buyer's invoice finalized, numbered and posted, and every provider's
statement) over a month of 10,000 buyer orgs and 10,000,000 usage events, beside
one SQL GROUP BY over the same usage events (quantity per buyer x type x model,
the least any close must read) in the same run; then the same close again (it
must change nothing) and the timing of that.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/close.py [--quick]

Runs in a throwaway database (test_<name>), created and dropped here (``--keep``
leaves it). Ends with one line: RESULT {json}. To close the same month again without
its set-up: ``--set-up-only`` (or ``--keep``) also copies the month as set up into
test_<name>_month, and ``--reuse`` makes test_<name> again from that copy and closes
it (same sizes; ``bulk_batches_checked`` is then 0: they were checked at the set-up).
``--profile PATH`` profiles the first close, and each of its worker processes into
PATH.<process name>.<pid> (by CPU time).

How the month is made. Ten million events through ingestion and rating would take
hours on a small machine, so most of the month is written straight into the
tables, in the shape the real path writes, and a sample goes through the real path:

- real path: the providers and a sample of buyer orgs (``org_create``, billing
  terms, profiles, ``credits_grant``), their jobs, deployments and leases
  (``sample_subjects``: usage is accepted only for subjects the platform made), their
  usage through ``usage_record`` in batches of up to 1,000, rated and accrued by the real followers
  (``billing.rating``, ``billing.accrual``); and every bulk org's prepaid float,
  granted through ``ledger_execute`` in batches;
- written in bulk (INSERT ... SELECT over generate_series): the other orgs
  (with their OrganizationCreated and billing-terms events, accounts, profiles),
  their usage rows, one UsageRecorded event per batch of up to 1,000 rows of one
  buyer, the journal entries rating would post for each batch (one per buyer and
  provider: ``usage:<first row id>``, legs to revenue, the provider's payable and
  fees), their postings, the balances they add up to, and the accrual rows. Rates
  come from ``billing.pricing.rate_for``; amounts are rounded half-even per event
  in SQL as ``rate_amount`` does.
- checked before the clock starts: for a sample of bulk batches, the real rating
  code (``usage_for_rating``, ``groups_for``, the entry it would post) must give
  the stored entries leg for leg, and the real accrual code (``accrue_batch``, run
  in a transaction that is rolled back) the stored accrual rows, field for field;
  after the close, every buyer has one invoice and the invoices' exact subtotals
  add up to what the usage entries charged the buyers in the journal.
- settled before the clock starts: VACUUM ANALYZE, then a CHECKPOINT, so that the
  set-up's ~3 GB of writes are on disk (as a month's usage is by the month's end)
  rather than flushed under the GROUP BY or the close.

What the month leaves out: each bulk batch holds one buyer's events (so one or two
entries per batch); no lease holds, fine-tune minimums or corrections (so no
charges besides rated usage); prepaid floats cover all usage (so no split entries
and no CreditExhausted). Rating's entries for the bulk orgs are recorded within the
month (as a live follower would), those of the sample when the bench runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")

import django

django.setup()

from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.test.utils import setup_test_environment
from django.utils import timezone

BATCH = 1000
MODELS = ("llama-3.1-8b", "qwen2.5-32b", "llama-3.1-70b", "llama-3.1-405b")
TRAINING_TYPES = ("lora-sft", "full-sft", "lora-dpo", "full-dpo")
GPU_MODELS = ("H100", "A100")
LEASE_PRICES = (2_490_000, 1_100_001)
REGION = "eu-west"
# Share of the orgs and weight of each in the month's events: a few busy buyers,
# many small ones.
SIZE_CLASSES = ((0.01, 40.0), (0.09, 4.0), (0.90, 0.267))
FLOAT_PER_EVENT = 3_000_000  # more than any one event here can cost: prepaid never runs dry


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def previous_month(now: datetime) -> date:
    first = date(now.year, now.month, 1)
    return (first - timedelta(days=1)).replace(day=1)


# --- the shape of the month --------------------------------------------------------


def event_sizes(orgs: int, events: int) -> list[int]:
    weights = []
    for share, weight in SIZE_CLASSES:
        weights += [weight] * round(orgs * share)
    weights = (weights + [SIZE_CLASSES[-1][1]] * orgs)[:orgs]
    total = sum(weights)
    sizes = [max(1, int(events * w / total)) for w in weights]
    sizes[-1] += events - sum(sizes)
    return sizes


def usage_of(org: int, n: int, row_id: int, provider: int) -> tuple:
    """The n-th usage event of an org (type, subject kind, subject, quantity, dims);
    the same rules as the SQL in ``USAGE_SQL``, for the orgs sent through ingestion."""
    k = n % 10
    if k == 0:
        return (
            "gpu.seconds",
            "lease",
            f"lease-{org}-{(n // 1000) % 3}",
            1 + (row_id * 7) % 3600,
            {
                "gpu_model": GPU_MODELS[org % 2],
                "provider": provider,
                "region": REGION,
                "node": f"node-{provider}-{n % 4}",
                "lease_price_micros_per_hour": LEASE_PRICES[org % 2],
            },
        )
    if k in (1, 2):
        job = (n // 5000) % 4
        return (
            "tokens.training" if k == 1 else "tokens.evaluation",
            "job",
            f"ft-{org}-{job}",
            1 + (row_id * 7919) % 400_000,
            {
                "model": MODELS[(org + job) % 4],
                "training_type": TRAINING_TYPES[org % 4],
                "region": REGION,
            },
        )
    return (
        "tokens.prompt" if k % 2 else "tokens.completion",
        "deployment",
        f"dep-{org}-{n % 3}",
        1 + (row_id * 104_729) % 200_000,
        {"model": MODELS[n % 4], "region": REGION},
    )


# --- set-up through the real path ----------------------------------------------------


def make_providers(count: int) -> list[int]:
    from core import services as core
    from ledger.models import Account
    from ledger.services import account_open, platform_account

    for kind in ("revenue", "fees", "promo"):
        platform_account(kind=kind, currency="USD")
    providers = []
    for n in range(count):
        org = core.org_create(name=f"bench provider {n}", kind="provider")
        account_open(organization=org, kind=Account.Kind.PAYABLE, currency="USD")
        providers.append(org.pk)
    return providers


def is_postpaid(index: int) -> bool:
    return index % 4 == 3


def tax_bps(index: int) -> int | None:
    return 1900 if index % 3 == 0 else None


def real_sample(
    sizes: list[int], providers: list[int], at: datetime, period_end: datetime
) -> list[int]:
    """Sample orgs through org creation, terms, grants, ingestion, rating and accrual."""
    from core import services as core
    from core.followers import followers_run_until_idle
    from invoicing.accruals import usage_accruals
    from invoicing.models import BillingProfile
    from ledger.services import credits_grant
    from metering.models import UsageEvent
    from metering.schema import SubjectIn, UsageEventIn
    from metering.services import usage_record
    from pricing.rating import usage_rating
    from pricing.terms import billing_terms_set

    orgs = []
    for index, size in enumerate(sizes):
        org = core.org_create(name=f"bench buyer {index}", kind="buyer")
        if is_postpaid(index):
            billing_terms_set(
                organization=org, postpaid=True, on_credit_exhausted="pause", actor="bench"
            )
        else:
            credits_grant(
                organization=org,
                amount_micros=FLOAT_PER_EVENT * size,
                currency="USD",
                reason="bench float",
                transfer_id=f"bench-float:{org.pk}",
            )
        if tax_bps(index):
            BillingProfile.objects.create(
                organization=org, tax_rate_bps=tax_bps(index), legal_name=org.name
            )
        orgs.append(org)
    step = (period_end - at - timedelta(hours=1)) / max(1, sum(sizes))
    when = at
    for index, (org, size) in enumerate(zip(orgs, sizes, strict=True)):
        provider = providers[index % len(providers)]
        subjects = sample_subjects(org, provider, at - timedelta(minutes=1))
        for first in range(0, size, BATCH):
            next_id = (
                UsageEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
            ) + 1
            events = []
            for n in range(first, min(size, first + BATCH)):
                usage_type, kind, subject, quantity, dims = usage_of(
                    org.pk, n, next_id + n - first, provider
                )
                when += step
                events.append(
                    UsageEventIn(
                        id=f"s{org.pk}-{n}",
                        source=f"runtime/{org.pk % 16}",
                        type=usage_type,
                        subject=SubjectIn(org=org.pk, **{kind: subjects.get(subject, subject)}),
                        time=when,
                        quantity=quantity,
                        dimensions=dims,
                    )
                )
            outcomes = usage_record(events=events)
            assert all(o.status == "accepted" for o in outcomes), outcomes[:3]
    followers_run_until_idle([usage_rating, usage_accruals])
    return [o.pk for o in orgs]


def sample_subjects(org, provider_id: int, started_at: datetime) -> dict[str, str]:
    """The subjects ``usage_of`` names for a sample org, made real (usage is accepted
    only for a lease, job or deployment the platform made, of that buyer): its four
    fine-tune jobs and three deployments under the same ids, and for each of its three
    ``lease-<org>-<n>`` a lease of 8 GPUs from ``provider_id``, running since the
    month's start at the GPU model and price ``usage_of`` sends (no hold: rating bills
    its GPU-seconds, as for the bulk orgs). Returns {the name usage_of gives: the real
    subject id}; the bulk orgs' rows are written as stored and name theirs as is."""
    from core.models import Organization
    from tests.subjects import deployment_of, job_of, lease_unheld

    provider = Organization.objects.get(pk=provider_id)
    for job in range(4):
        job_of(org, public_id=f"ft-{org.pk}-{job}")
    for n in range(3):
        deployment_of(org, public_id=f"dep-{org.pk}-{n}")
    return {
        f"lease-{org.pk}-{n}": lease_unheld(
            org,
            provider,
            price=LEASE_PRICES[org.pk % 2],
            gpus=8,
            gpu_model=GPU_MODELS[org.pk % 2],
            started_at=started_at,
        ).usage_subject
        for n in range(3)
    }


# --- set-up in bulk ------------------------------------------------------------------


def bulk_orgs(first_index: int, sizes: list[int], now: datetime) -> list[int]:
    """Buyer orgs with the events, accounts, terms and profiles their creation and
    set-up would have written; prepaid floats through the ledger itself."""
    from ledger.engine import EntryRequest, ledger_execute
    from ledger.models import Account
    from ledger.services import platform_account

    indexes = list(range(first_index, first_index + len(sizes)))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO core_organization (name, kind, is_operator, created_at) "
            "SELECT 'bench buyer ' || i, 'buyer', false, %s FROM unnest(%s::int[]) AS i "
            "ORDER BY i RETURNING id",
            [now, indexes],
        )
        org_ids = sorted(row[0] for row in cursor.fetchall())
        cursor.execute(
            "INSERT INTO core_event (tenant_id, stream_type, stream_id, version, type, "
            "schema_version, payload, metadata, idempotency_key, recorded_at) "
            "SELECT o, 'core.organization', 'organization:' || o, 1, 'OrganizationCreated', 1, "
            "jsonb_build_object('organization', o, 'kind', 'buyer', 'is_operator', false), "
            '\'{"actor": "system", "events_in_append": 1}\'::jsonb, NULL, %s '
            "FROM unnest(%s::bigint[]) AS o ORDER BY o",
            [now, org_ids],
        )
        postpaid = [o for i, o in zip(indexes, org_ids, strict=True) if is_postpaid(i)]
        prepaid = [o for i, o in zip(indexes, org_ids, strict=True) if not is_postpaid(i)]
        cursor.execute(
            "INSERT INTO core_event (tenant_id, stream_type, stream_id, version, type, "
            "schema_version, payload, metadata, idempotency_key, recorded_at) "
            "SELECT o, 'billing.terms', 'terms:' || o, 1, 'BillingTermsSet', 1, "
            '\'{"postpaid": true, "on_credit_exhausted": "pause"}\'::jsonb, '
            '\'{"actor": "bench", "events_in_append": 1}\'::jsonb, NULL, %s '
            "FROM unnest(%s::bigint[]) AS o ORDER BY o",
            [now, postpaid],
        )
        for kind, owners in ((Account.Kind.CREDIT, prepaid), (Account.Kind.RECEIVABLE, postpaid)):
            side = Account.NORMAL_SIDE[kind]
            limit = 0 if kind == Account.Kind.CREDIT else None
            cursor.execute(
                "WITH a AS (INSERT INTO billing_account (organization_id, kind, currency, "
                "normal_side, overdraft_limit_micros, created_at) "
                "SELECT o, %s, 'USD', %s, %s, %s FROM unnest(%s::bigint[]) AS o ORDER BY o "
                "RETURNING id) INSERT INTO billing_balance (account_id, debits_posted, "
                "credits_posted, debits_pending, credits_pending, position) "
                "SELECT id, 0, 0, 0, 0, 0 FROM a",
                [kind, side, limit, now, owners],
            )
        taxed = [o for i, o in zip(indexes, org_ids, strict=True) if tax_bps(i)]
        cursor.execute(
            "INSERT INTO billing_billingprofile (organization_id, legal_name, address, tax_id, "
            "tax_rate_bps, tax_label, updated_at) "
            "SELECT o, 'bench buyer ' || o, '', '', 1900, 'VAT', %s FROM unnest(%s::bigint[]) AS o",
            [now, taxed],
        )
    credit = dict(
        Account.objects.filter(organization_id__in=prepaid, kind="credit").values_list(
            "organization_id", "pk"
        )
    )
    promo = platform_account(kind="promo", currency="USD").pk
    size_of = dict(zip(org_ids, sizes, strict=True))
    floats = [
        EntryRequest(
            transfer_id=f"bench-float:{org}",
            currency="USD",
            legs=(
                (promo, "D", FLOAT_PER_EVENT * size_of[org]),
                (credit[org], "C", FLOAT_PER_EVENT * size_of[org]),
            ),
            kind="grant",
            description="bench float",
        )
        for org in prepaid
    ]
    for offset in range(0, len(floats), 1000):
        results = ledger_execute(floats[offset : offset + 1000], actor="system")
        assert all(r.status == "posted" for r in results), results[:3]
    return org_ids


def rate_table(at: datetime) -> list[dict]:
    """The rates of every (type, model, training type) the month uses, from the price book."""
    from pricing.book import rate_for

    rows = []
    for model in MODELS:
        for training_type in TRAINING_TYPES:
            for usage_type in ("tokens.training", "tokens.evaluation"):
                rate = rate_for(usage_type, {"model": model, "training_type": training_type}, at)
                rows.append(
                    {
                        "t": usage_type,
                        "m": model,
                        "tt": training_type,
                        "r": rate.rate_micros,
                        "u": rate.unit,
                        "f": 0,
                    }
                )
        for usage_type in ("tokens.prompt", "tokens.completion"):
            rate = rate_for(usage_type, {"model": model}, at)
            rows.append(
                {
                    "t": usage_type,
                    "m": model,
                    "tt": "",
                    "r": rate.rate_micros,
                    "u": rate.unit,
                    "f": 0,
                }
            )
    for price in LEASE_PRICES:
        rate = rate_for("gpu.seconds", {"lease_price_micros_per_hour": price, "provider": 1}, at)
        rows.append(
            {
                "t": "gpu.seconds",
                "m": str(price),
                "tt": "",
                "r": rate.rate_micros,
                "u": rate.unit,
                "f": rate.fee_bps,
            }
        )
    return rows


# One chunk of batches: the usage rows (inserted) and their rated sums per accrual key
# (into bench_acc), computed from the same generated rows. Half-even rounding per row
# as core.money.rate_amount.
_USAGE_SQL = """
WITH g AS (
    SELECT b.b, b.buyer, b.provider, b.at, r.id, r.n, r.k, r.job,
           CASE WHEN r.k = 0 THEN 'gpu.seconds'
                WHEN r.k = 1 THEN 'tokens.training' WHEN r.k = 2 THEN 'tokens.evaluation'
                WHEN r.k % 2 = 1 THEN 'tokens.prompt' ELSE 'tokens.completion' END AS type,
           CASE WHEN r.k = 0 THEN 1 + (r.id * 7) % 3600
                WHEN r.k IN (1, 2) THEN 1 + (r.id * 7919) % 400000
                ELSE 1 + (r.id * 104729) % 200000 END AS q,
           CASE WHEN r.k = 0 THEN ''
                WHEN r.k IN (1, 2) THEN (%(models)s::text[])[1 + (b.buyer + r.job) % 4]
                ELSE (%(models)s::text[])[1 + r.n % 4] END AS model,
           CASE WHEN r.k IN (1, 2) THEN (%(training_types)s::text[])[1 + b.buyer % 4] ELSE '' END
               AS training_type
      FROM bench_batch b
     CROSS JOIN LATERAL (
           SELECT b.first_id + i AS id, b.n0 + i AS n, (b.n0 + i) % 10 AS k,
                  ((b.n0 + i) / 5000) % 4 AS job
             FROM generate_series(0, b.cnt - 1) AS i) r
     WHERE b.b >= %(lo)s AND b.b < %(hi)s
), rated AS (
    SELECT g.*,
           CASE WHEN g.k = 0 THEN 'lease' WHEN g.k IN (1, 2) THEN 'job' ELSE 'deployment' END
               AS subject_kind,
           CASE WHEN g.k = 0 THEN 'lease-' || g.buyer || '-' || (g.n / 1000) % 3
                WHEN g.k IN (1, 2) THEN 'ft-' || g.buyer || '-' || g.job
                ELSE 'dep-' || g.buyer || '-' || g.n % 3 END AS subject,
           CASE WHEN g.k = 0 THEN (%(gpu_models)s::text[])[1 + g.buyer % 2] ELSE '' END
               AS gpu_model,
           CASE WHEN g.k = 0 THEN 'node-' || g.provider || '-' || g.n % 4 ELSE '' END AS node,
           CASE WHEN g.k = 0 THEN (%(lease_prices)s::bigint[])[1 + g.buyer % 2] END
               AS lease_price,
           rt.r AS rate, rt.u AS unit, rt.f AS fee_bps,
           (g.q * rt.r) / rt.u + CASE WHEN 2 * ((g.q * rt.r) %% rt.u) > rt.u
                OR (2 * ((g.q * rt.r) %% rt.u) = rt.u AND ((g.q * rt.r) / rt.u) %% 2 = 1)
                THEN 1 ELSE 0 END AS base
      FROM g JOIN bench_rate rt
        ON rt.t = g.type
       AND rt.m = CASE WHEN g.k = 0 THEN ((%(lease_prices)s::bigint[])[1 + g.buyer % 2])::text
                       ELSE g.model END
       AND rt.tt = g.training_type
), fee AS (
    SELECT rated.*,
           CASE WHEN k = 0 THEN (base * fee_bps) / 10000
                + CASE WHEN 2 * ((base * fee_bps) %% 10000) > 10000
                    OR (2 * ((base * fee_bps) %% 10000) = 10000
                        AND ((base * fee_bps) / 10000) %% 2 = 1)
                  THEN 1 ELSE 0 END
                ELSE 0 END AS fee
      FROM rated
), ins AS (
    INSERT INTO metering_usageevent (id, producer_org_id, source, event_id, type, buyer_id,
                                     subject_kind, subject_id, occurred_at, recorded_at, period,
                                     quantity, dimensions, note)
    SELECT id, 0, 'runtime/' || buyer %% 16, 'e' || id, type, buyer, subject_kind, subject,
           at - make_interval(secs => (%(batch)s - (n %% %(batch)s)) * 0.01), at, %(period)s, q,
           CASE WHEN k = 0 THEN jsonb_build_object('gpu_model', gpu_model, 'provider', provider,
                                                   'region', %(region)s, 'node', node,
                                                   'lease_price_micros_per_hour', lease_price)
                WHEN k IN (1, 2) THEN jsonb_build_object('model', model, 'training_type',
                                                         training_type, 'region', %(region)s)
                ELSE jsonb_build_object('model', model, 'region', %(region)s) END,
           ''
      FROM fee ORDER BY id
)
INSERT INTO bench_acc
SELECT b, buyer, type,
       CASE WHEN k = 0 OR k IN (1, 2) THEN subject ELSE '' END,
       model, training_type, gpu_model, %(region)s, node,
       CASE WHEN k = 0 THEN provider END,
       CASE WHEN k = 0 THEN lease_price ELSE rate END, unit, fee_bps,
       count(*), sum(q), sum(base + fee), sum(CASE WHEN k = 0 THEN base ELSE 0 END), sum(fee),
       min(id)
  FROM fee
 GROUP BY b, buyer, type, CASE WHEN k = 0 OR k IN (1, 2) THEN subject ELSE '' END, model,
          training_type, gpu_model, node, CASE WHEN k = 0 THEN provider END,
          CASE WHEN k = 0 THEN lease_price ELSE rate END, unit, fee_bps
"""
USAGE_SQL = re.sub(r"%(?![(])", "%%", _USAGE_SQL.replace("%%", "%"))  # modulo, not a parameter

# Rating's entries: one per batch and (buyer, provider), in the order of their first row.
ENTRIES_SQL = """
CREATE UNLOGGED TABLE bench_entry AS
SELECT a.b, a.provider, sum(a.amount)::bigint AS amount,
       (sum(a.amount) - sum(a.provider_micros) - sum(a.fee_micros))::bigint AS revenue,
       sum(a.provider_micros)::bigint AS provider_micros,
       sum(a.fee_micros)::bigint AS fee_micros, min(a.first_id) AS first_id,
       sum(a.events)::bigint AS events,
       bb.pos + row_number() OVER (PARTITION BY a.b ORDER BY min(a.first_id)) AS pos,
       bb.first_id AS batch_first, bb.debit, bb.payable, bb.at
  FROM bench_acc a JOIN bench_batch bb ON bb.b = a.b
 GROUP BY a.b, a.provider, bb.pos, bb.first_id, bb.debit, bb.payable, bb.at
"""

# The UsageRecorded event of each batch, then the EntryPosted events of its entries:
# payloads and metadata as metering.storage._store and billing.rating write them.
EVENTS_SQL = """
INSERT INTO core_event (position, tenant_id, stream_type, stream_id, version, type,
                        schema_version, payload, metadata, idempotency_key, recorded_at)
SELECT pos, NULL::bigint, 'metering.usage', 'usage:' || first_id, 1, 'UsageRecorded', 1,
       jsonb_build_object(
           'usage_ranges', jsonb_build_array(jsonb_build_array(first_id, first_id + cnt - 1)),
           'count', cnt, 'producer_org_id', 0),
       '{"actor": "producer:0"}'::jsonb, NULL, at
  FROM bench_batch WHERE b >= %(lo)s AND b < %(hi)s
 UNION ALL
SELECT pos, NULL, 'ledger.entry', 'entry:usage:' || first_id, 1, 'EntryPosted', 1,
       jsonb_build_object(
           'transfer_id', 'usage:' || first_id, 'currency', 'USD', 'kind', 'usage',
           'description', 'usage: ' || events || ' events of usage:' || batch_first
               || CASE WHEN provider IS NOT NULL
                       THEN ', lease GPU time from provider ' || provider ELSE '' END,
           'legs', jsonb_build_array(jsonb_build_array(debit, 'D', amount))
               || CASE WHEN revenue <> 0
                       THEN jsonb_build_array(jsonb_build_array(%(revenue)s, 'C', revenue))
                       ELSE '[]'::jsonb END
               || CASE WHEN provider_micros <> 0
                       THEN jsonb_build_array(jsonb_build_array(payable, 'C', provider_micros))
                       ELSE '[]'::jsonb END
               || CASE WHEN fee_micros <> 0
                       THEN jsonb_build_array(jsonb_build_array(%(fees)s, 'C', fee_micros))
                       ELSE '[]'::jsonb END),
       '{"actor": "rating"}'::jsonb, NULL, at + interval '1 second'
  FROM bench_entry WHERE b >= %(lo)s AND b < %(hi)s
 ORDER BY 1
"""

# The entries' legs as postings, in the legs' order.
POSTINGS_SQL = """
INSERT INTO billing_posting (entry_position, account_id, currency, side, amount_micros,
                             recorded_at)
SELECT e.pos, l.account, 'USD', l.side, l.amount, e.at + interval '1 second'
  FROM bench_entry e CROSS JOIN LATERAL (VALUES
       (1, e.debit, 'D', e.amount), (2, %(revenue)s, 'C', e.revenue),
       (3, e.payable, 'C', e.provider_micros), (4, %(fees)s, 'C', e.fee_micros))
       AS l(o, account, side, amount)
 WHERE e.b >= %(lo)s AND e.b < %(hi)s AND l.amount <> 0
 ORDER BY e.pos, l.o
"""

ACCRUALS_SQL = """
INSERT INTO billing_usageaccrual (buyer_id, period, currency, transfer_id, product, usage_type,
                                  subject, model, training_type, gpu_model, region, node,
                                  provider_id, rate_micros, rate_unit, fee_bps, events,
                                  quantity, amount_micros, provider_micros, fee_micros,
                                  first_usage_id, batch_position)
SELECT a.buyer, %(period)s, 'USD', 'usage:' || e.first_id,
       CASE WHEN a.type = 'gpu.seconds' THEN 'gpu_lease'
            WHEN a.type IN ('tokens.training', 'tokens.evaluation') THEN 'fine_tune'
            ELSE 'inference' END,
       a.type, a.subject, a.model, a.training_type, a.gpu_model, a.region, a.node,
       a.provider, a.rate, a.unit, a.fee_bps, a.events, a.quantity, a.amount,
       a.provider_micros, a.fee_micros, a.first_id, bb.pos
  FROM bench_acc a JOIN bench_batch bb ON bb.b = a.b
  JOIN bench_entry e ON e.b = a.b AND e.provider IS NOT DISTINCT FROM a.provider
 ORDER BY bb.pos, a.first_id
"""

# Balances are the journal's sums (the projection, as a replay would rebuild it).
BALANCES_SQL = """
UPDATE billing_balance b
   SET debits_posted = s.d, credits_posted = s.c, position = s.p
  FROM (SELECT account_id,
               sum(CASE WHEN side = 'D' THEN amount_micros ELSE 0 END) AS d,
               sum(CASE WHEN side = 'C' THEN amount_micros ELSE 0 END) AS c,
               max(entry_position) AS p
          FROM billing_posting GROUP BY account_id) s
 WHERE b.account_id = s.account_id
"""


def bulk_month(
    org_ids: list[int],
    sizes: list[int],
    providers: list[int],
    index_of: dict[int, int],
    start: datetime,
    end: datetime,
    period: date,
    seed: int,
) -> int:
    """Usage rows, UsageRecorded events, rating's entries and postings, balances and
    accruals for the bulk orgs. Returns the batches written."""
    from ledger.models import Account
    from ledger.services import platform_account

    rng = random.Random(seed)
    batches = []
    for org, size in zip(org_ids, sizes, strict=True):
        provider = providers[index_of[org] % len(providers)]
        batches += [(org, provider, n0, min(BATCH, size - n0)) for n0 in range(0, size, BATCH)]
    rng.shuffle(batches)  # the month's batches, interleaved in time
    span = (end - start - timedelta(hours=1)).total_seconds()
    accounts = {}
    for org, kind, pk in Account.objects.filter(
        organization_id__in=org_ids + providers
    ).values_list("organization_id", "kind", "pk"):
        accounts[(org, kind)] = pk
    revenue = platform_account(kind="revenue", currency="USD").pk
    fees = platform_account(kind="fees", currency="USD").pk
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM metering_usageevent")
        next_id = cursor.fetchone()[0] + 1
        cursor.execute("SELECT coalesce(max(position), 0) FROM core_event")
        next_position = cursor.fetchone()[0] + 1
    rows = []
    for b, (org, provider, n0, count) in enumerate(batches):
        at = start + timedelta(seconds=60 + span * b / len(batches))
        debit = accounts[(org, "receivable" if is_postpaid(index_of[org]) else "credit")]
        rows.append(
            {
                "b": b,
                "buyer": org,
                "provider": provider,
                "n0": n0,
                "cnt": count,
                "first_id": next_id,
                "pos": next_position + 3 * b,
                "at": at.isoformat(),
                "debit": debit,
                "payable": accounts[(provider, "payable")],
            }
        )
        next_id += count
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE UNLOGGED TABLE bench_batch AS SELECT * FROM json_to_recordset(%s::json) AS t("
            "b int, buyer bigint, provider bigint, n0 bigint, cnt int, first_id bigint, "
            "pos bigint, at timestamptz, debit bigint, payable bigint)",
            [json.dumps(rows)],
        )
        cursor.execute("ALTER TABLE bench_batch ADD PRIMARY KEY (b)")
        cursor.execute(
            "CREATE UNLOGGED TABLE bench_rate AS SELECT * FROM json_to_recordset(%s::json) AS t("
            "t text, m text, tt text, r bigint, u bigint, f bigint)",
            [json.dumps(rate_table(start + timedelta(days=1)))],
        )
        cursor.execute(
            "CREATE UNLOGGED TABLE bench_acc (b int, buyer bigint, type text, subject text, "
            "model text, training_type text, gpu_model text, region text, node text, "
            "provider bigint, rate bigint, unit bigint, fee_bps bigint, events bigint, "
            "quantity numeric, amount numeric, provider_micros numeric, fee_micros numeric, "
            "first_id bigint)"
        )
    params = {
        "models": list(MODELS),
        "training_types": list(TRAINING_TYPES),
        "gpu_models": list(GPU_MODELS),
        "lease_prices": list(LEASE_PRICES),
        "region": REGION,
        "batch": BATCH,
        "period": period,
    }
    chunk = 500
    for lo in range(0, len(batches), chunk):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(USAGE_SQL, {**params, "lo": lo, "hi": lo + chunk})
        if lo // chunk % 4 == 0:
            log(f"  usage: batches {lo + chunk} of {len(batches)}")
    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX ON bench_acc (b)")
        # Rating's entries: one per batch and (buyer, provider), in the order of their first row.
        cursor.execute(ENTRIES_SQL)
        cursor.execute("CREATE INDEX ON bench_entry (b)")
    for lo in range(0, len(batches), 4 * chunk):
        hi = lo + 4 * chunk
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(EVENTS_SQL, {"lo": lo, "hi": hi, "revenue": revenue, "fees": fees})
            cursor.execute(POSTINGS_SQL, {"lo": lo, "hi": hi, "revenue": revenue, "fees": fees})
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ACCRUALS_SQL, {"period": period})
        # Balances are the journal's sums; the followers have read everything.
        cursor.execute(BALANCES_SQL)
        cursor.execute("SELECT max(position) FROM core_event")
        last = cursor.fetchone()[0]
        for consumer in ("billing.rating", "billing.accrual"):
            cursor.execute(
                "INSERT INTO core_followerposition (consumer, position, updated_at) "
                "VALUES (%s, %s, now()) ON CONFLICT (consumer) DO UPDATE SET position = %s",
                [consumer, last, last],
            )
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('core_event', 'position'), %s)", [last]
        )
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('metering_usageevent', 'id'), "
            "(SELECT max(id) FROM metering_usageevent))"
        )
        for table in ("bench_acc", "bench_entry", "bench_batch", "bench_rate"):
            cursor.execute(f"DROP TABLE {table}")
    return len(batches)


# --- checks ----------------------------------------------------------------------------


def check_sample(org_ids: list[int], samples: int, seed: int) -> int:
    """The real rating and accrual code, run over bulk batches, must give what is stored."""
    from core.eventstore import _recorded
    from core.models import Event
    from invoicing.accruals import accrue_batch
    from invoicing.models import UsageAccrual
    from metering.selectors import usage_for_rating
    from pricing.rating import _Accounts, _entry, _without_lease_settled, groups_for
    from pricing.terms import billing_terms_for

    rng = random.Random(seed)
    candidates = list(
        Event.objects.filter(type="UsageRecorded", metadata__actor="producer:0")
        .order_by("position")
        .values_list("position", flat=True)
    )
    fields = [f.name for f in UsageAccrual._meta.fields if f.name != "id"]
    checked = 0
    for position in rng.sample(candidates, min(samples, len(candidates))):
        event = _recorded(Event.objects.get(position=position))
        lines = _without_lease_settled(usage_for_rating(ranges=event.payload["usage_ranges"]))
        if lines[0].buyer_id not in org_ids:
            continue  # a batch of the orgs ingested for real
        groups = [g for g in groups_for(lines) if g.amount > 0]
        accounts = _Accounts("USD")
        accounts.load(
            {g.buyer_id for g in groups} | {g.provider_id for g in groups if g.provider_id}
        )
        terms = billing_terms_for(organization_ids={g.buyer_id for g in groups})
        for group in groups:
            kind = "receivable" if terms[group.buyer_id].postpaid else "credit"
            expected = _entry(
                group,
                ((accounts.get(group.buyer_id, kind), "D", group.amount),),
                accounts,
                event.stream_id,
            )
            stored = Event.objects.get(stream_id=f"entry:{expected.transfer_id}").payload
            assert stored["legs"] == [list(leg) for leg in expected.legs], (stored, expected)
            assert stored["description"] == expected.description, (stored, expected)
        before = sorted(
            tuple(row)
            for row in UsageAccrual.objects.filter(batch_position=position).values_list(*fields)
        )
        with transaction.atomic():
            UsageAccrual.objects.filter(batch_position=position).delete()
            accrue_batch(event)
            after = sorted(
                tuple(row)
                for row in UsageAccrual.objects.filter(batch_position=position).values_list(*fields)
            )
            transaction.set_rollback(True)
        assert before == after, (position, before[:2], after[:2])
        checked += 1
    return checked


def check_close(period: date, buyers: int) -> tuple[int, int]:
    from invoicing.models import Invoice, ProviderStatement

    invoices = Invoice.objects.filter(period_start__date=period, kind="monthly")
    assert invoices.count() == buyers, (invoices.count(), buyers)
    assert not invoices.filter(status="draft").exists()
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT coalesce(sum(p.amount_micros), 0) FROM billing_posting p
                 JOIN billing_account a ON a.id = p.account_id
                 JOIN core_event e ON e.position = p.entry_position
                WHERE a.kind IN ('credit', 'receivable') AND p.side = 'D'
                  AND e.stream_id LIKE 'entry:usage:%%'"""
        )
        charged = cursor.fetchone()[0]
        cursor.execute(
            "SELECT sum(subtotal_exact_micros), count(DISTINCT number) FROM billing_invoice "
            "WHERE kind = 'monthly'"
        )
        invoiced, numbers = cursor.fetchone()
    assert invoiced == charged, (invoiced, charged)
    assert numbers == buyers
    return invoices.count(), ProviderStatement.objects.count()


# --- the baseline --------------------------------------------------------------------


def group_by(period: date) -> tuple[float, int]:
    with connection.cursor() as cursor:
        start = time.perf_counter()
        cursor.execute(
            "SELECT buyer_id, type, dimensions ->> 'model', sum(quantity) "
            "FROM metering_usageevent WHERE period = %s GROUP BY 1, 2, 3",
            [period],
        )
        rows = cursor.fetchall()
        return time.perf_counter() - start, len(rows)


def python_cpu() -> float:
    """CPU seconds of this process and of its children that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def checkpoint(cursor) -> None:
    """CHECKPOINT, where this role may (superuser or pg_checkpoint); else a note."""
    try:
        with transaction.atomic():
            cursor.execute("CHECKPOINT")
    except DatabaseError as exc:
        log(f"no checkpoint before the clock starts ({exc}): a flush may overlap the timing")


def month_counts(cursor, period: date) -> tuple[int, int, int]:
    """The month's usage events, journal entries and usage accruals."""
    cursor.execute("SELECT count(*) FROM metering_usageevent WHERE period = %s", [period])
    stored = cursor.fetchone()[0]
    cursor.execute("SELECT count(*) FROM core_event WHERE stream_type = 'ledger.entry'")
    entries = cursor.fetchone()[0]
    cursor.execute("SELECT count(*) FROM billing_usageaccrual")
    accruals = cursor.fetchone()[0]
    return stored, entries, accruals


# --- a month set up once, closed many times (--set-up-only or --keep, then --reuse) ---


def _snapshot_name(db_name: str) -> str:
    return f"{db_name}_month"


def snapshot_take(db_name: str) -> None:
    """A copy of the set-up month (before any close), for ``--reuse``: a file copy of
    the database, taken with no connection open to it."""
    connections.close_all()
    snapshot = connection.ops.quote_name(_snapshot_name(db_name))
    with connection._nodb_cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {snapshot}")
        cursor.execute(
            f"CREATE DATABASE {snapshot} TEMPLATE {connection.ops.quote_name(db_name)} "
            "STRATEGY FILE_COPY"
        )
    log(f"snapshot of the month: {_snapshot_name(db_name)}")


def snapshot_restore() -> str:
    """The test database made again from the snapshot a set-up took (the close changes
    it), and this process's connection pointed at it; its name."""
    db_name = connection.creation._get_test_db_name()
    snapshot = _snapshot_name(db_name)
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [snapshot])
        if cursor.fetchone() is None:
            sys.exit(f"--reuse: no snapshot {snapshot}; run with --set-up-only first")
        cursor.execute(f"DROP DATABASE IF EXISTS {connection.ops.quote_name(db_name)}")
        cursor.execute(
            f"CREATE DATABASE {connection.ops.quote_name(db_name)} "
            f"TEMPLATE {connection.ops.quote_name(snapshot)} STRATEGY FILE_COPY"
        )
    connection.close()
    settings.DATABASES[connection.alias]["NAME"] = db_name
    connection.settings_dict["NAME"] = db_name
    return db_name


def workers_profiled(path: str) -> None:
    """cProfile every process the close forks (its finalizing workers), each into
    ``<path>.<process name>.<pid>``: the parent's own profile shows it waiting on them.
    Their clock is the process's CPU time, not the wall's: on cores shared with other
    work, a wall-clock profile charges a function with the time it was descheduled."""
    import cProfile
    from multiprocessing.process import BaseProcess

    run = BaseProcess.run

    def profiled_run(self: BaseProcess) -> None:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        try:
            run(self)
        finally:
            profiler.disable()
            profiler.dump_stats(f"{path}.{self.name}.{os.getpid()}")

    BaseProcess.run = profiled_run  # type: ignore[method-assign]


def set_up_month(
    args: argparse.Namespace,
    orgs: int,
    events: int,
    provider_count: int,
    sizes: list[int],
    sample_index: list[int],
    now: datetime,
    period: date,
) -> tuple[list[int], int, int, int, int]:
    """The month written (see the module's docstring) and checked; returns the sample
    orgs' ids, the usage events, journal entries and accruals stored, and the bulk
    batches checked against rating and accrual."""
    from invoicing.periods import month_bounds

    start, end = month_bounds(period)
    bulk_index = [i for i in range(orgs) if i not in set(sample_index)]
    providers = make_providers(provider_count)
    sample_events = sum(sizes[i] for i in sample_index)
    log(f"sample: {len(sample_index)} orgs, {sample_events} events through ingestion")
    real_ids = real_sample(
        [sizes[i] for i in sample_index], providers, start + timedelta(minutes=1), end
    )
    log("bulk: orgs, accounts, floats")
    bulk_ids = bulk_orgs(orgs, [sizes[i] for i in bulk_index], now)
    index_of = {org: orgs + n for n, org in enumerate(bulk_ids)}
    batches = bulk_month(
        bulk_ids, [sizes[i] for i in bulk_index], providers, index_of, start, end, period, 1
    )
    log(f"bulk: {batches} batches written; vacuum analyze, checkpoint")
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        # The month's rows written out before the clock starts, as a month's usage
        # would be by its end: not flushed by a checkpoint running under the
        # GROUP BY or the close (some 3 GB written here in two minutes).
        checkpoint(cursor)
        stored, entries, accruals = month_counts(cursor, period)
    assert stored == events, (stored, events)
    checked = check_sample(bulk_ids, 12 if args.quick else 40, 2)
    return real_ids, stored, entries, accruals, checked


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="500 orgs, 200,000 events")
    parser.add_argument("--orgs", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--providers", type=int)
    parser.add_argument("--sample-orgs", type=int, help="orgs sent through the real ingestion path")
    parser.add_argument("--keep", action="store_true", help="leave the database in place")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="cProfile the first close into PATH, and each of its worker processes into "
        "PATH.<process name>.<pid>",
    )
    parser.add_argument(
        "--set-up-only",
        action="store_true",
        help="stop before the close and keep the database (and a snapshot of it for --reuse)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="no set-up: close the month that a run with --set-up-only or --keep (and the "
        "same sizes) left, its database made again from that run's snapshot first",
    )
    args = parser.parse_args()
    orgs = args.orgs or (500 if args.quick else 10_000)
    events = args.events or (200_000 if args.quick else 10_000_000)
    provider_count = args.providers or (5 if args.quick else 40)
    sample_orgs = args.sample_orgs if args.sample_orgs is not None else (4 if args.quick else 12)
    if connection.vendor != "postgresql":
        sys.exit("bench/close.py measures PostgreSQL: set DATABASE_URL=postgres://...")

    from invoicing.month_close import period_close

    now = timezone.now()
    period = previous_month(now)
    setup_test_environment()
    sizes = event_sizes(orgs, events)
    # The sample: medium-sized orgs (the busiest would take long through ingestion).
    large, medium = round(orgs * SIZE_CLASSES[0][0]), round(orgs * SIZE_CLASSES[1][0])
    sample_index = list(range(large, large + sample_orgs // 3)) + list(
        range(large + medium, large + medium + sample_orgs - sample_orgs // 3)
    )
    if args.reuse:
        db_name = snapshot_restore()
    else:
        db_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        set_up = time.perf_counter()
        if args.reuse:
            real_ids, checked = sample_index, 0  # checked when the month was set up
            with connection.cursor() as cursor:
                checkpoint(cursor)
                stored, entries, accruals = month_counts(cursor, period)
            assert stored == events, (stored, events)
        else:
            real_ids, stored, entries, accruals, checked = set_up_month(
                args, orgs, events, provider_count, sizes, sample_index, now, period
            )
        set_up = time.perf_counter() - set_up
        log(
            f"set-up {set_up:.0f} s: {stored} events, {entries} journal entries, "
            f"{accruals} accruals; {checked} bulk batches checked against rating and accrual"
        )
        if (args.keep or args.set_up_only) and not args.reuse:
            snapshot_take(db_name)

        if args.set_up_only:
            args.keep = True
            return
        load_before = os.getloadavg()[0]
        group_by_first, groups = group_by(period)
        log(f"GROUP BY: {group_by_first:.2f} s, {groups} groups")
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            workers_profiled(args.profile)
        cpu_before = python_cpu()
        began = time.perf_counter()
        result = period_close(period=period, finalize=True, now=now)
        close_s = time.perf_counter() - began
        close_cpu_s = python_cpu() - cpu_before
        load_after = os.getloadavg()[0]
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        log(f"close: {close_s:.2f} s {result}")
        began = time.perf_counter()
        again = period_close(period=period, finalize=True, now=now)
        close_again_s = time.perf_counter() - began
        log(f"close again: {close_again_s:.2f} s {again}")
        assert again.finalized == 0 and again.already_final == result.finalized, again
        group_by_second, _ = group_by(period)
        log(f"GROUP BY again: {group_by_second:.2f} s")
        invoices, statements = check_close(period, orgs)
        assert statements == result.statements == provider_count, (statements, result.statements)
    finally:
        connections.close_all()
        if args.keep:
            log(f"kept database {db_name}")
        else:
            connection.creation.destroy_test_db(db_name, verbosity=0)

    group_by_s = min(group_by_first, group_by_second)
    out = {
        "close_s": round(close_s, 2),
        "group_by_s": round(group_by_s, 2),
        "ratio": round(close_s / group_by_s, 2),
        "close_again_s": round(close_again_s, 2),
        # CPU of this process and the close's worker processes (not PostgreSQL's).
        "close_python_cpu_s": round(close_cpu_s, 2),
        "group_by_runs_s": [round(group_by_first, 2), round(group_by_second, 2)],
        "orgs": orgs,
        "events": events,
        "invoices": invoices,
        "statements": statements,
        "journal_entries": entries,
        "accruals": accruals,
        "real_path_orgs": len(real_ids),
        "real_path_events": sum(sizes[i] for i in sample_index),
        "bulk_batches_checked": checked,
        "set_up_s": round(set_up),
        "cpus": os.cpu_count(),
        # The machine's 1-minute load average as the close began and as it ended: the
        # close and PostgreSQL share the same cores with whatever else runs.
        "load_average": [round(load_before, 2), round(load_after, 2)],
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
