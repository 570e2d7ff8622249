"""Demo work for ``make run``: one command on the buyer's running H100 lease (on
northlake-gpu-01), which the demo node's agent claims and runs once ``make run`` is up.

``load(buyer=...)`` places it when the lease is active and has no run waiting; it
returns the run, or None when there is no such lease (it ended: the demo's lease
runs two hours from the first ``make run``).
"""

from __future__ import annotations

from core.models import Organization
from marketplace.assignments import services
from marketplace.assignments.models import Assignment
from marketplace.models import Lease

COMMAND = [
    "sh",
    "-c",
    "nvidia-smi -L || echo no driver here; echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES",
]


def load(*, buyer: Organization, hostname: str) -> Assignment | None:
    lease = (
        Lease.objects.filter(
            organization=buyer, state=Lease.State.ACTIVE, managed=False, node__hostname=hostname
        )
        .order_by("-pk")
        .first()
    )
    if lease is None:
        return None
    waiting = Assignment.objects.filter(lease=lease, state=Assignment.State.QUEUED).first()
    if waiting is not None:
        return waiting
    return services.run_create(organization=buyer, lease_id=lease.pk, command=COMMAND)
