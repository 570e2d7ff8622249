"""Demo usage for ``make run``: a fine-tune job's training and evaluation tokens, some
inference tokens, and the GPU-seconds of a lease on the demo provider, rated into the
demo buyer's balance. Safe on every run: the events' ids are fixed, so a second load
is answered ``duplicate`` and rates nothing new."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from billing.rating import usage_rating
from core.followers import followers_run_until_idle
from core.models import Organization
from metering.schema import SubjectIn, UsageEventIn
from metering.services import usage_record


def load(*, buyer: Organization, provider: Organization) -> None:
    at = timezone.now() - timedelta(hours=1)
    job = SubjectIn(org=buyer.pk, job="ft-demo")
    deployment = SubjectIn(org=buyer.pk, deployment="dep-demo")
    lease = SubjectIn(org=buyer.pk, lease="demo:lease-1")
    model: dict[str, str | int] = {"model": "llama-3.1-8b", "region": "eu-west"}
    training: dict[str, str | int] = {**model, "training_type": "lora-sft"}
    events = [
        UsageEventIn(
            id="demo-train-1",
            source="runtime/demo",
            type="tokens.training",
            subject=job,
            time=at,
            quantity=1_200_000,
            dimensions=training,
        ),
        UsageEventIn(
            id="demo-train-2",
            source="runtime/demo",
            type="tokens.training",
            subject=job,
            time=at + timedelta(minutes=10),
            quantity=1_200_000,
            dimensions=training,
        ),
        UsageEventIn(
            id="demo-eval-1",
            source="runtime/demo",
            type="tokens.evaluation",
            subject=job,
            time=at + timedelta(minutes=11),
            quantity=150_000,
            dimensions=training,
        ),
        UsageEventIn(
            id="demo-prompt-1",
            source="runtime/demo",
            type="tokens.prompt",
            subject=deployment,
            time=at + timedelta(minutes=20),
            quantity=420_000,
            dimensions=model,
        ),
        UsageEventIn(
            id="demo-completion-1",
            source="runtime/demo",
            type="tokens.completion",
            subject=deployment,
            time=at + timedelta(minutes=20),
            quantity=96_000,
            dimensions=model,
        ),
        UsageEventIn(
            id="demo-gpu-1",
            source="agent/demo",
            type="gpu.seconds",
            subject=lease,
            time=at + timedelta(minutes=30),
            quantity=1_800,
            dimensions={
                "gpu_model": "H100",
                "region": "eu-west",
                "provider": provider.pk,
                "lease_price_micros_per_hour": 2_500_000,
            },
        ),
    ]
    usage_record(events=events)
    followers_run_until_idle([usage_rating])
