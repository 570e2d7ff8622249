"""The reaper: claims past their ``locked_until`` (the node stopped renewing) and train
or serve runs never claimed in time end; a lost train run is re-queued and its
node's lease fails (training.py, ``train_lost``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from core.db import retry_transaction
from marketplace.assignments import training
from marketplace.assignments.common import _index_bump, _iso, claim_ttl
from marketplace.assignments.models import (
    Assignment,
)
from marketplace.assignments.run_ends import _end

UNCLAIMED_REAPED = ("train", "serve")


@retry_transaction
def _reap_one(assignment_id: int, now: datetime) -> bool:
    assignment = (
        Assignment.objects.select_for_update()
        .filter(pk=assignment_id, state__in=Assignment.CLAIMED_STATES, locked_until__lt=now)
        .first()
    )
    if assignment is None:  # renewed or ended meanwhile
        return _reap_unclaimed(assignment_id, now)
    expired = assignment.locked_until
    train = assignment.kind == Assignment.Kind.TRAIN
    if assignment.stop_requested:
        state, reason = Assignment.State.CANCELLED, assignment.stop_reason
    else:
        state = Assignment.State.FAILED
        reason = (
            f"attempt {assignment.attempt} lost its claim: no report from node "
            f"{assignment.node_id} since before {_iso(expired)}"
            + (
                " (re-queued: the next node resumes from the last checkpoint)"
                if train
                else " (the deployment starts anew on its next request)"
                if assignment.kind == Assignment.Kind.SERVE
                else " (command runs are not retried)"
            )
        )
    _end(assignment, state=state, now=now, reason=reason, lost=train)
    assignment.save()
    if train or assignment.kind == Assignment.Kind.SERVE:
        # The dead node's lease fails at the last renewal (a deployment on it stops
        # with it) and the node is unhealthy until it heartbeats again.
        training.train_lost(assignment, now=now)
    _index_bump(assignment.node_id)
    return True


def _unclaimed(now: datetime) -> Q:
    """Train and serve runs queued too long: two TTLs; a gang member, the gang's
    barrier."""
    barrier = timedelta(seconds=settings.ASSIGNMENT_GANG_BARRIER_SECONDS)
    return Q(kind__in=UNCLAIMED_REAPED, state=Assignment.State.QUEUED) & (
        Q(gang="", created_at__lt=now - 2 * claim_ttl())
        | (~Q(gang="") & Q(created_at__lt=now - barrier))
    )


def _reap_unclaimed(assignment_id: int, now: datetime) -> bool:
    """A train or serve run that its node's agent never claimed within two TTLs (no
    agent runs there, or it is wedged), or a gang member not within the gang's
    barrier: its lease fails as if its node had died, so a fine-tune is re-queued
    elsewhere (a gang: released, its order matched again) and a deployment stopped
    (its next request starts one elsewhere)."""
    assignment = (
        Assignment.objects.select_for_update().filter(_unclaimed(now), pk=assignment_id).first()
    )
    if assignment is None:
        return False
    window = (
        settings.ASSIGNMENT_GANG_BARRIER_SECONDS
        if assignment.gang
        else int(2 * claim_ttl().total_seconds())
    )
    reason = f"node {assignment.node_id} did not claim it within {window} s " + (
        "(the gang's barrier: its members are released and the order matched again)"
        if assignment.gang
        else "(re-queued for another node)"
        if assignment.kind == Assignment.Kind.TRAIN
        else "(the deployment starts anew elsewhere)"
    )
    _end(assignment, state=Assignment.State.FAILED, now=now, reason=reason, lost=True)
    assignment.save()
    training.train_lost(assignment, now=now)
    _index_bump(assignment.node_id)
    return True


def assignments_reap(*, now: datetime | None = None) -> int:
    """End every claim past its ``locked_until``: its node stopped renewing (it died,
    or lost the network). Command runs end ``failed`` and are not retried (see the
    module doc); train runs are re-queued, and so is one its node never claimed
    within two TTLs; a serve run's lease fails (its deployment stops) in both cases.
    Cheap when there is nothing to do: two indexed reads."""
    now = now or timezone.now()
    due = list(
        Assignment.objects.filter(
            state__in=Assignment.CLAIMED_STATES, locked_until__lt=now
        ).values_list("pk", flat=True)[:500]
    )
    due += list(Assignment.objects.filter(_unclaimed(now)).values_list("pk", flat=True)[:500])
    return sum(1 for assignment_id in due if _reap_one(assignment_id, now))
