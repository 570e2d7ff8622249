"""Every write of assignments: the buyer's runs on a raw lease, and the node protocol.

The protocol (the agent's side is providers/agent_runs.py)
-----------------------------------------------------------

The server owns the desired state; the node pulls it, over outbound HTTP only, so a
node behind NAT works.

1. **Blocking query.** ``GET /api/v1/agent/nodes/{id}/assignments?index=N&wait=25``
   answers the node's live assignments and the node's index as soon as the index
   differs from N, else an empty answer at the timeout. Every change the agent must
   see (a new assignment, a claim, a start, an end, a stop request) moves the node's
   index in the transaction that makes it (``NodeAssignmentIndex``).
2. **Claim.** ``POST …/assignments/{aid}/claim`` is a conditional update from
   ``queued``: one claim wins, the next gets 409. It answers the **attempt** (the
   fencing token), the spec, the lease's GPU UUIDs and ``locked_until``. A gang
   member's claim is a barrier (gangs.py): it answers ``wait`` until every member
   has claimed, and the holder re-posts it with its attempt until the rendezvous
   comes.
3. **Events and renewals.** ``POST …/runs/{aid}/events`` carries a batch (started, log
   lines, finished, failed) with its attempt and batch number. Every post renews the
   claim (``locked_until = now + TTL``), and the answer says whether to stop (the run
   was cancelled, or its lease ended). A post from another attempt, or after the run
   ended, is a 409 that changes nothing: the agent kills the work and wipes its
   directory. A batch number the server has already applied is acknowledged without
   applying it again, so an agent may retry a post whose answer it lost.
4. **Reaper.** ``assignments_reap`` (each pass of ``run_matching``) ends every claim
   past ``locked_until``: its node stopped renewing. A command run ends ``failed``
   and is **not retried**: a buyer's command may have effects outside its work
   directory (uploads, writes to the buyer's own services), so running it a second
   time is not ours to decide. Training is re-queued from its checkpoint instead.

Kinds: ``command`` (a buyer's command on a raw lease) and ``train`` (a fine-tune's
training: marketplace/assignments/training.py adds signed URLs to its claim, its own
reports, uploads, and its re-queueing by the reaper) and ``serve`` (an inference
deployment's engine: marketplace/assignments/serving.py; long-lived, renewed while
the deployment lives, its requests relayed to it). The index,
claim, attempt, renewals and stop are the same for every kind.

This module is the surface the rest of the marketplace and other apps import; the code
lives in a module per role: ``runs`` (the buyer's runs), ``claims``, ``reports``,
``reaper``, ``run_ends`` (how a run ends, for every kind, with the gang's rules) and
``common`` (the claim's TTL, events, the node's index).
"""

from __future__ import annotations

from marketplace.assignments.claims import ENDPOINT, Claim, assignment_claim
from marketplace.assignments.common import StaleAttempt, claim_ttl
from marketplace.assignments.reaper import UNCLAIMED_REAPED, assignments_reap
from marketplace.assignments.reports import (
    MAX_EVENTS_PER_BATCH,
    MAX_LOG_BYTES_PER_RUN,
    MAX_LOG_LINE_CHARS,
    MAX_LOG_LINES_PER_RUN,
    TRAIN_EVENTS,
    Report,
    assignment_report,
)
from marketplace.assignments.run_ends import MAX_REASON_CHARS
from marketplace.assignments.runs import (
    MAX_LIVE_RUNS_PER_LEASE,
    assignments_stop_for_lease,
    run_cancel,
    run_create,
)

__all__ = [
    "ENDPOINT",
    "MAX_EVENTS_PER_BATCH",
    "MAX_LIVE_RUNS_PER_LEASE",
    "MAX_LOG_BYTES_PER_RUN",
    "MAX_LOG_LINES_PER_RUN",
    "MAX_LOG_LINE_CHARS",
    "MAX_REASON_CHARS",
    "TRAIN_EVENTS",
    "UNCLAIMED_REAPED",
    "Claim",
    "Report",
    "StaleAttempt",
    "assignment_claim",
    "assignment_report",
    "assignments_reap",
    "assignments_stop_for_lease",
    "claim_ttl",
    "run_cancel",
    "run_create",
]
