"""Rating: usage into the ledger, exactly once, with the right accounts and amounts."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count

import msgspec
import pytest

from core.followers import follower_position, followers_run_until_idle
from core.models import Event, FollowerPosition
from ledger import services
from ledger.models import Account, Balance
from metering.schema import SubjectIn, UsageEventIn
from metering.services import usage_record
from pricing.book import model_tier, rate_for
from pricing.events import CREDIT_EXHAUSTED
from pricing.rating import rate_usage, usage_rating, usage_transfer_id
from pricing.terms import billing_terms_set
from tests.subjects import job_for, lease_for

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 2, tzinfo=UTC)
_ids = count(1)


def tokens(
    org, quantity, *, usage_type="tokens.training", model="llama-3.1-8b", training_type="lora-sft"
) -> UsageEventIn:
    dims = {"model": model}
    if usage_type in ("tokens.training", "tokens.evaluation"):
        dims["training_type"] = training_type
    return UsageEventIn(
        id=f"u{next(_ids)}",
        source="runtime",
        type=usage_type,
        subject=SubjectIn(org=org.pk, job=job_for(org).public_id),
        time=datetime.now(UTC),
        quantity=quantity,
        dimensions=dims,
    )


def gpu(org, provider, seconds, price=2_000_000) -> UsageEventIn:
    return UsageEventIn(
        id=f"g{next(_ids)}",
        source="agent",
        type="gpu.seconds",
        # a lease billed by its usage (no hold), at its own price
        subject=SubjectIn(org=org.pk, lease=lease_for(org, provider, price=price).usage_subject),
        time=datetime.now(UTC),
        quantity=seconds,
        dimensions={"provider": provider.pk, "lease_price_micros_per_hour": price},
    )


def record(*events):
    outcomes = usage_record(events=list(events))
    assert [o.status for o in outcomes] == ["accepted"] * len(events), outcomes


def balance(org, kind) -> int:
    account = services.account_open(organization=org, kind=kind, currency="USD")
    b = Balance.objects.get(account=account)
    if account.normal_side == "C":
        return b.credits_posted - b.debits_posted
    return b.debits_posted - b.credits_posted


def platform(kind) -> int:
    account = services.platform_account(kind=kind, currency="USD")
    b = Balance.objects.get(account=account)
    return b.credits_posted - b.debits_posted


def rate():
    return followers_run_until_idle([usage_rating])


def grant(org, micros, tid):
    services.credits_grant(
        organization=org, amount_micros=micros, currency="USD", reason="test", transfer_id=tid
    )


def test_rating_rounds_half_even_once_per_event():
    # $0.48 per 1M tokens: 1 token is 0.48 µ -> 0; 3 tokens 1.44 -> 1; 5 tokens 2.4 -> 2
    small = {"model": "llama-3.1-8b", "training_type": "lora-sft"}
    assert [
        rate_usage(usage_type="tokens.training", quantity=q, dimensions=small, at=NOW).amount_micros
        for q in (1, 3, 5, 1_000_000)
    ] == [0, 1, 2, 480_000]
    # 2.5 µ rounds to 2 (even), 3.5 µ to 4
    half = {"model": "x-8b", "training_type": "lora-sft"}

    def price(usage_type, dims, at):
        return rate_for(usage_type, dims, at).__class__(1, 2, "USD")

    assert (
        rate_usage(
            usage_type="tokens.training", quantity=5, dimensions=half, at=NOW, price=price
        ).amount_micros
        == 2
    )
    assert (
        rate_usage(
            usage_type="tokens.training", quantity=7, dimensions=half, at=NOW, price=price
        ).amount_micros
        == 4
    )
    # a lease: 90 s at $2.00/h = 50,000 µ to the provider, + 10% fee
    lease = rate_usage(
        usage_type="gpu.seconds",
        quantity=90,
        at=NOW,
        dimensions={"provider": 7, "lease_price_micros_per_hour": 2_000_000, "gpu_model": "H100"},
    )
    assert (lease.amount_micros, lease.provider_micros, lease.fee_micros, lease.provider_id) == (
        55_000,
        50_000,
        5_000,
        7,
    )


def test_model_tiers_follow_the_model_size():
    assert [
        model_tier(m)
        for m in ("llama-3.1-8b", "qwen2.5-72b-instruct", "llama-3.1-405b", "mystery", "gpt2-350m")
    ] == ["small", "medium", "large", "medium", "small"]


def test_tokens_debit_prepaid_credit_and_credit_revenue(cast):
    grant(cast.buyer_a, 10_000_000, "g1")
    record(
        tokens(cast.buyer_a, 1_000_000),
        tokens(cast.buyer_a, 2_000_000, model="x-70b"),
        tokens(cast.buyer_a, 500_000, usage_type="tokens.completion"),
    )
    assert rate() == 1
    expected = 480_000 + 3_000_000 + 100_000
    assert balance(cast.buyer_a, Account.Kind.CREDIT) == 10_000_000 - expected
    assert platform(Account.Kind.REVENUE) == expected
    assert rate() == 0  # nothing new


def test_gpu_seconds_pay_the_provider_and_the_platform_fee(cast):
    grant(cast.buyer_a, 10_000_000, "g1")
    record(
        gpu(cast.buyer_a, cast.provider_a, 3600),
        gpu(cast.buyer_a, cast.provider_b, 1800),
        tokens(cast.buyer_a, 1_000_000),
    )
    rate()
    assert balance(cast.provider_a, Account.Kind.PAYABLE) == 2_000_000
    assert balance(cast.provider_b, Account.Kind.PAYABLE) == 1_000_000
    assert platform(Account.Kind.FEES) == 300_000
    assert platform(Account.Kind.REVENUE) == 480_000
    assert balance(cast.buyer_a, Account.Kind.CREDIT) == 10_000_000 - 3_300_000 - 480_000


def test_postpaid_buyers_owe_on_their_receivable(cast):
    billing_terms_set(
        organization=cast.buyer_b, postpaid=True, on_credit_exhausted="stop", actor="test"
    )
    record(tokens(cast.buyer_b, 1_000_000))
    rate()
    assert balance(cast.buyer_b, Account.Kind.RECEIVABLE) == 480_000
    assert not Event.objects.filter(type=CREDIT_EXHAUSTED).exists()


def test_when_credit_runs_out_the_rest_is_owed_and_running_work_is_told_once(cast):
    # given $1.00 of credit and $1.44 of usage
    grant(cast.buyer_a, 1_000_000, "g1")
    record(tokens(cast.buyer_a, 3_000_000))
    rate()
    # then credit is used to zero (never below), the rest is owed, and work is told
    assert balance(cast.buyer_a, Account.Kind.CREDIT) == 0
    assert balance(cast.buyer_a, Account.Kind.RECEIVABLE) == 440_000
    told = Event.objects.filter(type=CREDIT_EXHAUSTED)
    assert told.count() == 1
    assert told.get().payload["action"] == "pause"
    assert told.get().tenant_id == cast.buyer_a.pk
    # more usage while at zero: owed, not told again
    record(tokens(cast.buyer_a, 1_000_000))
    rate()
    assert balance(cast.buyer_a, Account.Kind.RECEIVABLE) == 920_000
    assert told.count() == 1
    # a top-up, then exhausted again: a new episode is told
    grant(cast.buyer_a, 500_000, "g2")
    record(tokens(cast.buyer_a, 2_000_000))
    rate()
    assert balance(cast.buyer_a, Account.Kind.CREDIT) == 0
    assert told.count() == 2


def test_rewinding_the_follower_posts_nothing_twice(cast):
    grant(cast.buyer_a, 10_000_000, "g1")
    record(tokens(cast.buyer_a, 1_000_000), gpu(cast.buyer_a, cast.provider_a, 60))
    record(tokens(cast.buyer_a, 2_000_000))
    assert rate() == 2
    before = (balance(cast.buyer_a, Account.Kind.CREDIT), platform(Account.Kind.REVENUE))
    entries = Event.objects.filter(stream_type="ledger.entry").count()
    # when the tracking row is rewound to the start (a restore, an operator mistake)
    FollowerPosition.objects.filter(consumer=usage_rating.name).update(position=0)
    assert rate() == 2
    # then every entry is a replay: same balances, no new entries
    assert (balance(cast.buyer_a, Account.Kind.CREDIT), platform(Account.Kind.REVENUE)) == before
    assert Event.objects.filter(stream_type="ledger.entry").count() == entries
    first = min(
        Event.objects.filter(stream_type="metering.usage").values_list(
            "payload__usage_ranges__0__0", flat=True
        )
    )
    assert Event.objects.filter(stream_id=f"entry:{usage_transfer_id(first)}").exists()
    assert (
        follower_position(usage_rating.name)
        == Event.objects.filter(stream_type="metering.usage").order_by("-position").first().position
    )


def test_late_usage_for_a_closed_period_counts_in_the_next_open_one(cast):
    from datetime import date

    from metering.models import UsageEvent
    from metering.services import usage_period_close

    usage_period_close(organization=cast.buyer_a, period=date(2026, 10, 1))
    usage_period_close(organization=cast.buyer_a, period=date(2026, 11, 1))
    late = tokens(cast.buyer_a, 10)
    late = msgspec.structs.replace(late, time=datetime(2026, 10, 31, 23, 0, tzinfo=UTC))
    [outcome] = usage_record(events=[late], now=datetime(2026, 12, 1, 1, tzinfo=UTC))
    assert outcome.status == "accepted"
    assert outcome.note == "late: 2026-10 was closed; counted in 2026-12"
    row = UsageEvent.objects.get(event_id=late.id)
    assert row.period == date(2026, 12, 1)
    assert row.occurred_at == late.time
    other = tokens(cast.buyer_b, 10)
    other = msgspec.structs.replace(other, time=datetime(2026, 10, 31, 23, 0, tzinfo=UTC))
    [outcome] = usage_record(events=[other], now=datetime(2026, 12, 1, 1, tzinfo=UTC))
    assert outcome.note == ""


def test_a_month_closed_for_many_buyers_at_once_keeps_each_first_closing(cast):
    from datetime import date

    from metering.models import ClosedPeriod
    from metering.services import usage_periods_close

    october = date(2026, 10, 1)
    first = datetime(2026, 11, 1, 1, tzinfo=UTC)
    # given buyer a's October already closed
    assert usage_periods_close(organization_ids=[cast.buyer_a.pk], period=october, now=first) == 1
    # when the month is closed for both buyers (a named twice) later
    later = datetime(2026, 11, 2, 1, tzinfo=UTC)
    ids = [cast.buyer_a.pk, cast.buyer_b.pk, cast.buyer_a.pk]
    closed_now = usage_periods_close(organization_ids=ids, period=october, now=later)
    # then only b's closes now, and a keeps its first closing
    assert closed_now == 1
    assert dict(ClosedPeriod.objects.values_list("organization_id", "closed_at")) == {
        cast.buyer_a.pk: first,
        cast.buyer_b.pk: later,
    }
    # and late usage of either goes to November
    late = msgspec.structs.replace(
        tokens(cast.buyer_b, 10), time=datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    )
    [outcome] = usage_record(events=[late], now=later)
    assert outcome.note == "late: 2026-10 was closed; counted in 2026-11"


def test_the_ledger_sums_to_zero_after_rating(cast):
    grant(cast.buyer_a, 2_000_000, "g1")
    record(
        *(tokens(cast.buyer_a, 333_333) for _ in range(10)),
        gpu(cast.buyer_a, cast.provider_a, 7),
        gpu(cast.buyer_b, cast.provider_b, 3601),
    )
    rate()
    sums = {}
    for b in Balance.objects.all():
        sums.setdefault("d", 0)
        sums["d"] += b.debits_posted
        sums.setdefault("c", 0)
        sums["c"] += b.credits_posted
    assert sums["d"] == sums["c"] > 0


def test_the_rating_follower_is_registered_for_run_follower():
    from core.followers import registered

    assert usage_rating in registered()
    assert usage_rating.stream_types == ("metering.usage",)


def _batches():
    return [
        e
        for e in Event.objects.filter(stream_type="metering.usage").order_by("position")
        if e.type == "UsageRecorded"
    ]


def _recorded(events):
    from core.eventstore import _recorded as as_recorded

    return [as_recorded(e) for e in events]


def test_summed_rating_gives_what_rating_row_by_row_gives(cast):
    from pricing.rating import _groups_per_row, batch_groups

    rng = __import__("random").Random(7)
    models = ("llama-3.1-8b", "x-70b", "y-405b")
    for _ in range(3):
        batch = []
        for n in range(300):
            buyer = (cast.buyer_a, cast.buyer_b)[n % 2]
            if n % 7 == 0:
                provider = (cast.provider_a, cast.provider_b)[n % 3 % 2]
                batch.append(gpu(buyer, provider, rng.randint(1, 4000), rng.randint(1, 9_999_999)))
            else:
                kind = ("tokens.training", "tokens.evaluation", "tokens.prompt")[n % 3]
                batch.append(
                    tokens(buyer, rng.randint(0, 3_000_000), usage_type=kind, model=models[n % 3])
                )
        record(*batch)
    events = _recorded(_batches())
    assert len(events) == 3
    summed = batch_groups(events)
    assert summed == [_groups_per_row(event) for event in events]
    assert sum(len(groups) for groups in summed) > 6  # buyers x providers, per batch


def test_a_batch_across_a_price_change_is_rated_row_by_row(cast):
    from datetime import timedelta

    from pricing.rating import _groups_per_row, batch_groups
    from pricing.schedule import price_schedule

    now = datetime.now(UTC)
    price_schedule(
        item="fine_tune",
        tier="up-to-16b",
        variant="lora-sft",
        value=900_000,
        effective_from=now - timedelta(minutes=1),
        now=now - timedelta(minutes=20),
        reason="new price",
    )
    before, after = tokens(cast.buyer_a, 1_000_000), tokens(cast.buyer_a, 1_000_000)
    before = msgspec.structs.replace(before, time=now - timedelta(minutes=3))
    record(before, after)
    events = _recorded(_batches())
    [groups] = batch_groups(events)
    assert groups == _groups_per_row(events[0])
    old = rate_usage(
        usage_type="tokens.training",
        quantity=1_000_000,
        dimensions=before.dimensions,
        at=before.time,
    ).amount_micros
    assert groups[0].amount == old + 900_000 != 2 * 900_000


def test_batches_rated_together_post_what_each_batch_posts_alone(cast):
    from pricing.rating import _groups_per_row

    grant(cast.buyer_a, 10**12, "g1")
    grant(cast.buyer_b, 10**12, "g2")
    for n in range(4):
        record(
            tokens(cast.buyer_a, 1_000 + n),
            tokens(cast.buyer_b, 2_000 + n, model="x-70b"),
            gpu(cast.buyer_b, cast.provider_a, 60 + n),
        )
    events = _recorded(_batches())
    alone = {
        usage_transfer_id(g.first_usage_id): g.amount
        for event in events
        for g in _groups_per_row(event)
    }
    assert followers_run_until_idle([usage_rating], batch_size=25) == 4
    posted = {
        e.payload["transfer_id"]: sum(leg[2] for leg in e.payload["legs"] if leg[1] == "D")
        for e in Event.objects.filter(stream_id__startswith="entry:usage:")
    }
    assert posted == alone
    assert len(posted) == 4 * 3  # per batch: buyer a; buyer b; buyer b with the provider
