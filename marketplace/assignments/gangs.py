"""Gangs: one fine-tune trained across the nodes of a gang lease (an order for
``node_count`` > 1 nodes, allocated together: marketplace/engine.py).

The flow
--------
1. **Queued together.** ``train_assign`` on one lease of a gang queues one train
   assignment per member lease (in lease order), sharing a ``gang`` key, each with
   its ``gang_rank`` (0 to N-1) and ``gang_size`` N. They start at the job's last
   attempt, so each member's claim is attempt N + 1: the same for all.
2. **The claim is a barrier.** Each member's agent claims as usual, offering a
   ``host:port`` for the rendezvous (``endpoint``: an address of its node that the
   others can reach, and a free port). The answer says ``wait`` until every member
   has claimed; the agent re-posts the claim with its attempt (each post renews the
   claim) until the answer carries the **rendezvous**: ``id`` (job and attempt, the
   same for every member), member 0's endpoint, ``nnodes``, and whether this member
   hosts the store. The agent then starts ``torchrun --nnodes N --nproc-per-node G
   --rdzv-backend c10d --rdzv-endpoint host:port --rdzv-id id``.
   A member that does not claim within ``ASSIGNMENT_GANG_BARRIER_SECONDS`` of being
   queued is reaped as its node being lost (below): the members that did claim are
   released and the order goes back to the book, to be matched again.
3. **One trainer, reported by its rank 0.** Global rank 0 (wherever torchrun puts it)
   prints the events and writes checkpoints and the final model; its agent reports
   and uploads them on its own member's assignment. The job's steps are billed by
   job and step, whichever member reports them; a checkpoint committed by any
   member is where the job's next attempt resumes.
4. **Ends.** The job succeeds when every member exited 0 and one of them committed
   the final model. The first member to end otherwise (its node lost: the reaper;
   its trainer dying: ``finished`` with a non-zero code; stopped on request) has the
   other members told to stop, and the job moves to its next attempt as a whole. A
   lost node moves it at once: its lease ends, which ends the whole gang's leases (a
   gang runs together) and puts the order back in the book. Otherwise the last
   member's end decides: a crashed trainer re-queues the gang on the same leases (up
   to ``ASSIGNMENT_TRAIN_RETRIES``: training.py); a stop stops the job's run. Waiting
   for the last end means a trainer that failed because a peer's node died counts
   as that loss, not as a crash.

Locks: a report or claim of a gang member locks every member's row, in primary key
order (``locked``), so two members ending at once are decided one after the other.
"""

from __future__ import annotations

import uuid
from typing import Any

from core.errors import NotFound
from marketplace.assignments.models import Assignment


def new_key() -> str:
    return uuid.uuid4().hex


def members(assignment: Assignment, *, lock: bool = False) -> list[Assignment]:
    query = Assignment.objects.filter(gang=assignment.gang)
    if lock:
        query = query.select_for_update()
    return list(query.order_by("pk"))


def locked(node_id: int, assignment_id: int) -> Assignment:
    """The node's assignment, row-locked; a gang member with all its gang's rows
    locked (in primary key order: see the module doc)."""
    gang = (
        Assignment.objects.filter(node_id=node_id, pk=assignment_id)
        .values_list("gang", flat=True)
        .first()
    )
    if gang is None:  # another node's, or none: the same answer
        raise NotFound(f"assignment {assignment_id} not found on node {node_id}")
    if not gang:
        return Assignment.objects.select_for_update().get(pk=assignment_id)
    rows = list(Assignment.objects.select_for_update().filter(gang=gang).order_by("pk"))
    return next(row for row in rows if row.pk == assignment_id)


def rendezvous(assignment: Assignment) -> dict[str, Any] | None:
    """The gang's rendezvous once every member has claimed this attempt and none has
    ended; None while the barrier waits (or the gang is breaking up)."""
    gang = members(assignment)
    if len(gang) != assignment.gang_size:
        return None
    if any(m.claimed_at is None or not m.is_live or m.stop_requested for m in gang):
        return None
    host = next(m for m in gang if m.gang_rank == 0)
    return {
        "id": f"{assignment.workload_id}-a{assignment.attempt}",
        "endpoint": host.endpoint,
        "nnodes": assignment.gang_size,
        "rank": assignment.gang_rank,
        "host": assignment.gang_rank == 0,
    }


def live_peers(assignment: Assignment) -> bool:
    return any(m.pk != assignment.pk and m.is_live for m in members(assignment))
