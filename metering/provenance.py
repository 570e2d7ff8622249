"""Usage provenance: each event's subject must be one the platform made, of the
subject buyer (asked of the marketplace through the ``usage_provenance`` port); a
lease's GPU-seconds are priced by the lease."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from core import ports
from core.models import Organization
from core.ports import LeaseFacts, UsageProvenancePort, WorkloadFacts
from metering.batches import _BUYER_KINDS, Outcome, Sender, _org
from metering.schema import UsageEventIn

_LEASE_DIMENSIONS = (
    ("gpu_model", "gpu_model"),
    ("provider", "provider_organization_id"),
    ("lease_price_micros_per_hour", "price_micros_per_hour"),
)


def _provenance() -> UsageProvenancePort:
    return ports.get(ports.UsageProvenancePort)


def _proven(
    sender: Sender,
    indices: Sequence[int],
    events: list[UsageEventIn],
    outcomes: list[Outcome | None],
    bounded: dict[str, LeaseFacts],
) -> tuple[list[int], list[UsageEventIn]]:
    """The events whose subject the platform's records prove; the others are
    answered ``rejected``. One query for the batch's buyer organizations, and one
    per subject kind (leases, jobs, deployments) through the ``usage_provenance``
    port:

    - the subject org is a buyer organization;
    - ``gpu.seconds``: the lease exists and is that buyer's; from a provider key, it
      runs on one of the sender's nodes (on the agent key's node, when bound to
      one); the event's time lies in the lease's live interval [started, ended] (a
      lease still running: up to the future limit); ``gpu_model``, ``provider`` and
      ``lease_price_micros_per_hour`` are the lease's — one sent that differs is
      refused, one left out is filled in. The price billed is never the client's;
    - ``tokens.*``: the job exists and is that buyer's, or the deployment does and
      is that buyer's or a platform deployment (base models, serving every buyer).

    An unknown subject and another buyer's (or another provider's) are answered the
    same ``unknown_subject``, so a sender learns nothing of subjects not its own. The
    facts of the leases whose GPU-seconds pass go into ``bounded`` (by subject id),
    for their bound, checked as they are stored (``_leases_within_bounds``)."""
    buyer_ids = set(map(_org, events))
    kinds: dict[int, str] = dict(
        Organization.objects.filter(pk__in=buyer_ids).values_list("pk", "kind")
    )
    lease_ids: list[str] = []
    job_ids: list[str] = []
    deployment_ids: list[str] = []
    for event in events:
        subject = event.subject
        if subject.lease is not None:
            lease_ids.append(subject.lease)
        elif subject.job is not None:
            job_ids.append(subject.job)
        elif subject.deployment is not None:
            deployment_ids.append(subject.deployment)
    provenance = _provenance()
    leases = provenance.leases(subject_ids=lease_ids) if lease_ids else {}
    workloads = (
        provenance.workloads(job_ids=job_ids, deployment_ids=deployment_ids)
        if job_ids or deployment_ids
        else {}
    )
    proven: tuple[list[int], list[UsageEventIn]] = ([], [])
    for index, event in zip(indices, events, strict=True):
        org = event.subject.org
        if kinds.get(org) not in _BUYER_KINDS:
            outcomes[index] = Outcome(
                index,
                event.id,
                "rejected",
                "unknown_subject",
                f"subject.org {org} is not a buyer organization",
            )
            continue
        lease_id = event.subject.lease
        if lease_id is not None:
            lease = leases.get(lease_id)
            lease_refusal = _lease_refusal(sender, event, lease_id, lease)
            if lease_refusal is not None:
                outcomes[index] = Outcome(index, event.id, "rejected", *lease_refusal)
                continue
            event = _priced_by(event, lease)  # type: ignore[arg-type]  # proven above
            bounded[lease_id] = lease  # type: ignore[assignment]
        else:
            refusal = _workload_refusal(event, workloads)
            if refusal is not None:
                outcomes[index] = Outcome(index, event.id, "rejected", "unknown_subject", refusal)
                continue
        proven[0].append(index)
        proven[1].append(event)
    return proven


def _lease_refusal(
    sender: Sender, event: UsageEventIn, lease_id: str, lease: LeaseFacts | None
) -> tuple[str, str] | None:
    """Why a lease's GPU-seconds are refused (code, reason), or None."""
    org = event.subject.org
    mine = sender.provider_org_id
    if (
        lease is None
        or lease.organization_id != org
        or (mine is not None and lease.provider_organization_id != mine)
    ):
        served = f" served by organization {mine}" if mine is not None else ""
        return (
            "unknown_subject",
            f"subject.lease {lease_id!r} is not a lease of organization {org}{served}",
        )
    if sender.node_id is not None and lease.node_id != sender.node_id:
        return (
            "forbidden",
            f"subject.lease {lease_id!r} runs on node {lease.node_id}, not on node "
            f"{sender.node_id} of this agent key",
        )
    dims = event.dimensions
    for name, attribute in _LEASE_DIMENSIONS:
        if name in dims and dims[name] != getattr(lease, attribute):
            return (
                "invalid",
                f"dimensions.{name} {dims[name]!r} does not match lease {lease_id}'s "
                f"{getattr(lease, attribute)!r}",
            )
    if lease.started_at is None:
        return ("invalid", f"subject.lease {lease_id!r} has not started")
    if event.time < lease.started_at or (
        lease.ended_at is not None and event.time > lease.ended_at
    ):
        ended = lease.ended_at.isoformat() if lease.ended_at is not None else "now"
        return (
            "invalid",
            f"time {event.time.isoformat()} is outside lease {lease_id}'s live interval "
            f"[{lease.started_at.isoformat()}, {ended}]",
        )
    return None


def _priced_by(event: UsageEventIn, lease: LeaseFacts) -> UsageEventIn:
    """The event with the lease's own gpu_model, provider and price as dimensions."""
    dims = event.dimensions
    if (
        dims.get("lease_price_micros_per_hour") == lease.price_micros_per_hour
        and dims.get("provider") == lease.provider_organization_id
        and dims.get("gpu_model") == lease.gpu_model
    ):
        return event
    return msgspec.structs.replace(
        event,
        dimensions={
            **dims,
            "gpu_model": lease.gpu_model,
            "provider": lease.provider_organization_id,
            "lease_price_micros_per_hour": lease.price_micros_per_hour,
        },
    )


def _workload_refusal(
    event: UsageEventIn, workloads: dict[tuple[str, str], WorkloadFacts]
) -> str | None:
    """Why tokens of a job or deployment are refused, or None."""
    org = event.subject.org
    job = event.subject.job
    if job is not None:
        found = workloads.get(("job", job))
        if found is None or found.organization_id != org:
            return f"subject.job {job!r} is not a fine-tune job of organization {org}"
        return None
    deployment = event.subject.deployment
    found = workloads.get(("deployment", deployment))  # type: ignore[arg-type]
    if found is None or found.organization_id not in (org, None):
        return f"subject.deployment {deployment!r} is not a deployment serving organization {org}"
    return None
