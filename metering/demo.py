"""Demo usage for ``make run``: a fine-tune job's training and evaluation tokens, some
inference tokens, and the GPU-seconds of a lease on the demo provider, rated into the
demo buyer's balance. Usage is accepted only for subjects the platform made, so the
caller names real subjects: a lease, and a running job and a deployment when there
are; the GPU-seconds are timed inside the lease's live interval, within what its GPUs
could have run, and priced by the lease. Safe
on every run: the events' ids are fixed, so a second load is answered ``duplicate``
and rates nothing new."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from core import ports
from core.models import Organization
from core.ports import UsageProvenancePort
from metering.schema import SubjectIn, UsageEventIn
from metering.services import usage_record


def load(
    *, buyer: Organization, lease: str, job: str | None = None, deployment: str | None = None
) -> None:
    """``lease``, ``job`` and ``deployment``: usage subjects of ``buyer`` (a lease's
    ``lease-<id>``, a job's and a deployment's public ids); without a job or a
    deployment, its events are left out. A job named must still be running: a
    finished job's bill (its per-job minimum) is closed when it finishes."""
    at = timezone.now() - timedelta(hours=1)
    provenance = ports.get(UsageProvenancePort)
    started = provenance.leases(subject_ids=[lease])[lease].started_at
    # 1,800 GPU-seconds of one GPU, reported when they have been used: half an hour
    # into the lease (a lease's GPU-seconds may not outrun its GPUs' live time).
    gpu_at = (started or at) + timedelta(minutes=30)
    on_job = SubjectIn(org=buyer.pk, job=job)
    model: dict[str, str | int] = {"model": "llama-3.1-8b", "region": "eu-west"}
    training: dict[str, str | int] = {**model, "training_type": "lora-sft"}
    events = [
        UsageEventIn(
            id="demo-train-1",
            source="runtime/demo",
            type="tokens.training",
            subject=on_job,
            time=at,
            quantity=1_200_000,
            dimensions=training,
        ),
        UsageEventIn(
            id="demo-train-2",
            source="runtime/demo",
            type="tokens.training",
            subject=on_job,
            time=at + timedelta(minutes=10),
            quantity=1_200_000,
            dimensions=training,
        ),
        UsageEventIn(
            id="demo-eval-1",
            source="runtime/demo",
            type="tokens.evaluation",
            subject=on_job,
            time=at + timedelta(minutes=11),
            quantity=150_000,
            dimensions=training,
        ),
        UsageEventIn(
            id="demo-prompt-1",
            source="runtime/demo",
            type="tokens.prompt",
            subject=SubjectIn(org=buyer.pk, deployment=deployment),
            time=at + timedelta(minutes=20),
            quantity=420_000,
            dimensions=model,
        ),
        UsageEventIn(
            id="demo-completion-1",
            source="runtime/demo",
            type="tokens.completion",
            subject=SubjectIn(org=buyer.pk, deployment=deployment),
            time=at + timedelta(minutes=20),
            quantity=96_000,
            dimensions=model,
        ),
        UsageEventIn(
            id="demo-gpu-1",
            source="agent/demo",
            type="gpu.seconds",
            subject=SubjectIn(org=buyer.pk, lease=lease),
            time=gpu_at,
            quantity=1_800,
            # gpu_model, provider and price: the lease's own, filled in at ingestion
            dimensions={"region": "eu-west"},
        ),
    ]
    if job is None:
        events = [e for e in events if e.subject.job is None]
    if deployment is None:
        events = [e for e in events if e.subject.deployment is None]
    usage_record(events=events)
