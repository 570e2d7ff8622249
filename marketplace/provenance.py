"""Marketplace's side of the ``usage_provenance`` port (core/ports.py): the facts of
the leases, fine-tune jobs and deployments that usage events name, so metering can
refuse usage of a subject the platform never made (an invented lease, another
buyer's job) and bill a lease's GPU-seconds at the lease's own price.

One query per subject kind per batch, by indexed ids (a lease by primary key, a job
or deployment by its unique public id): ingestion stays a handful of statements per
batch of 1,000 events."""

from __future__ import annotations

from collections.abc import Sequence

from core.ports import LeaseFacts, WorkloadFacts
from marketplace.models import Lease
from marketplace.workloads.models import Deployment, FineTuneJob

_LEASE_PREFIX = "lease-"


def _lease_pk(subject_id: str) -> int | None:
    """The primary key in a lease's usage subject (``Lease.usage_subject``), or None
    when the id is not one (``lease-007`` is not ``lease-7``: only the exact form)."""
    if not subject_id.startswith(_LEASE_PREFIX):
        return None
    digits = subject_id[len(_LEASE_PREFIX) :]
    if not digits.isascii() or not digits.isdigit() or digits != str(int(digits)):
        return None
    pk = int(digits)
    return pk if 0 < pk < 2**63 else None


class MarketplaceProvenance:
    def leases(self, *, subject_ids: Sequence[str]) -> dict[str, LeaseFacts]:
        pks = {pk for pk in map(_lease_pk, set(subject_ids)) if pk is not None}
        if not pks:
            return {}
        rows = Lease.objects.filter(pk__in=pks).values_list(
            "pk",
            "organization_id",
            "provider_id",
            "node_id",
            "gpu_model",
            "price_per_gpu_hour_micros",
            "started_at",
            "ended_at",
            "gpu_count",
        )
        return {
            f"{_LEASE_PREFIX}{pk}": LeaseFacts(
                subject_id=f"{_LEASE_PREFIX}{pk}",
                organization_id=buyer,
                provider_organization_id=provider,
                node_id=node,
                gpu_model=gpu_model,
                price_micros_per_hour=price,
                started_at=started,
                ended_at=ended,
                gpu_count=gpus,
            )
            for pk, buyer, provider, node, gpu_model, price, started, ended, gpus in rows
        }

    def workloads(
        self, *, job_ids: Sequence[str], deployment_ids: Sequence[str]
    ) -> dict[tuple[str, str], WorkloadFacts]:
        found: dict[tuple[str, str], WorkloadFacts] = {}
        for kind, model, ids in (
            ("job", FineTuneJob, job_ids),
            ("deployment", Deployment, deployment_ids),
        ):
            if not ids:
                continue
            for public_id, owner in model.objects.filter(public_id__in=set(ids)).values_list(
                "public_id", "organization_id"
            ):
                found[(kind, public_id)] = WorkloadFacts(kind, public_id, owner)
        return found
