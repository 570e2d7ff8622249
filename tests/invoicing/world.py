"""A small generated month for the invoicing, statement and export tests: usage of
several buyers (fine-tunes, inference, raw GPU leases on two providers) ingested
through metering, rated and accrued by the real followers, with top-ups, a refund
and a voided hold on the side. Usage is accepted only for subjects the platform made
(metering.provenance._proven), so the world's jobs, deployments and leases are real
rows of their buyer (tests/subjects.py): a lease per provider, GPU model and price,
running since before the month, billed by its usage (no hold)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from itertools import count

from core.followers import followers_run_until_idle
from invoicing.accruals import usage_accruals
from invoicing.models import BillingProfile
from ledger import services
from ledger.models import Account, Balance
from marketplace.workloads.models import FineTuneJob
from metering.schema import SubjectIn, UsageEventIn
from metering.services import usage_record
from pricing.book import price_book_forget
from pricing.rating import usage_rating
from tests.subjects import deployment_for, job_of, lease_unheld

PERIOD = date(2026, 10, 1)
START = datetime(2026, 10, 1, tzinfo=UTC)
CLOSE_AT = datetime(2026, 11, 10, tzinfo=UTC)  # after the grace period
_ids = count(1)


def event(org, usage_type, quantity, at, **dims) -> UsageEventIn:
    """A usage event of ``org``: GPU-seconds of ``lease`` (a lease's usage subject),
    training tokens of ``job`` (by default the world's first job of ``org``),
    inference tokens of ``deployment`` (by default a deployment of ``org``)."""
    n = next(_ids)
    if usage_type == "gpu.seconds":
        subject = SubjectIn(org=org.pk, lease=dims.pop("lease"))
    elif usage_type in ("tokens.training", "tokens.evaluation"):
        subject = SubjectIn(org=org.pk, job=dims.pop("job", None) or job_named(org, 0))
    else:
        deployment = dims.pop("deployment", None) or deployment_for(org).public_id
        subject = SubjectIn(org=org.pk, deployment=deployment)
    return UsageEventIn(
        id=f"w{n}",
        source="test",
        type=usage_type,
        subject=subject,
        time=at,
        quantity=quantity,
        dimensions=dims,
    )


def job_named(org, n: int) -> str:
    """The world's fine-tune job ``ft-<org>-<n>`` of ``org``, made on first use."""
    public_id = f"ft-{org.pk}-{n}"
    if not FineTuneJob.objects.filter(public_id=public_id).exists():
        job_of(org, public_id=public_id)
    return public_id


def record(events: list[UsageEventIn]) -> None:
    for start in range(0, len(events), 1000):
        outcomes = usage_record(events=events[start : start + 1000])
        assert all(o.status == "accepted" for o in outcomes), outcomes[:3]


def settle() -> None:
    followers_run_until_idle([usage_rating, usage_accruals])


def taxed_month(cast, *, events_per_buyer: int):  # type: ignore[no-untyped-def]
    """October of the generated world, rated and accrued: Buyer A prepaid, Buyer B
    (mostly owed) taxed at 19% under a legal name. Returns the cast."""
    BillingProfile.objects.create(
        organization=cast.buyer_b, tax_rate_bps=1900, legal_name="Buyer B GmbH"
    )
    record(generate_month(cast, events_per_buyer=events_per_buyer))
    settle()
    return cast


def grant(org, amount: int, transfer_id: str) -> None:
    services.credits_grant(
        organization=org,
        amount_micros=amount,
        currency="USD",
        reason="top-up",
        transfer_id=transfer_id,
    )


def balance(org, kind: str) -> int:
    account = Account.objects.filter(organization=org, kind=kind, currency="USD").first()
    if account is None:
        return 0
    b = Balance.objects.get(account=account)
    return (
        b.credits_posted - b.debits_posted
        if account.normal_side == "C"
        else b.debits_posted - b.credits_posted
    )


def platform(kind: str) -> int:
    account = services.platform_account(kind=kind, currency="USD")
    b = Balance.objects.get(account=account)
    return (
        b.credits_posted - b.debits_posted
        if account.normal_side == "C"
        else b.debits_posted - b.credits_posted
    )


def generate_month(cast, *, events_per_buyer: int = 400, seed: int = 7) -> list[UsageEventIn]:
    """Thousands of usage events over October 2026 for buyer_a, buyer_b and the
    operator (as a buyer), on provider_a and provider_b; prepaid and postpaid."""
    price_book_forget()
    rng = random.Random(seed)
    grant(cast.buyer_a, 40_000_000, "world:topup-a")
    grant(cast.buyer_b, 1_000_000, "world:topup-b")  # runs out: the rest is owed
    events = []
    models = ["llama-3.1-8b", "qwen2.5-32b", "llama-3.1-70b", "llama-3.1-405b"]
    leases: dict[tuple[int, int, str, int], str] = {}

    def lease(org, provider, gpu_model: str, price: int) -> str:
        key = (org.pk, provider.pk, gpu_model, price)
        if key not in leases:
            leases[key] = lease_unheld(
                org,
                provider,
                price=price,
                gpu_model=gpu_model,
                started_at=START - timedelta(days=1),
            ).usage_subject
        return leases[key]

    for org in (cast.buyer_a, cast.buyer_b):
        jobs = [job_named(org, n) for n in range(3)]
        deployment = deployment_for(org).public_id
        for i in range(events_per_buyer):
            at = START + timedelta(seconds=rng.randrange(0, 30 * 86400))
            roll = rng.random()
            if roll < 0.35:
                job = jobs[rng.randrange(3)]
                events.append(
                    event(
                        org,
                        rng.choice(["tokens.training", "tokens.evaluation"]),
                        rng.randrange(1, 400_000),
                        at,
                        job=job,
                        model=models[rng.randrange(2)],
                        training_type=rng.choice(["lora-sft", "full-dpo"]),
                    )
                )
            elif roll < 0.75:
                events.append(
                    event(
                        org,
                        rng.choice(["tokens.prompt", "tokens.completion"]),
                        rng.randrange(1, 200_000),
                        at,
                        deployment=deployment,
                        model=rng.choice(models),
                    )
                )
            else:
                provider = rng.choice([cast.provider_a, cast.provider_b])
                # drawn in the order they always were, so the month stays the same
                seconds = rng.randrange(1, 3600)
                gpu_model = rng.choice(["H100", "A100"])
                price = rng.choice([2_490_000, 1_100_001])
                events.append(
                    event(
                        org,
                        "gpu.seconds",
                        seconds,
                        at,
                        lease=lease(org, provider, gpu_model, price),
                        gpu_model=gpu_model,
                        provider=provider.pk,
                        node=f"node-{provider.pk}-{i % 2}",
                        region="eu-west",
                        lease_price_micros_per_hour=price,
                    )
                )
    events.sort(key=lambda e: e.time)
    return events
