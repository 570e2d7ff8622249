"""Assignments: a piece of leased work for one node, and the per-node index that the
agents' blocking query waits on.

An assignment's ``attempt`` is its fencing token: a claim increments it, and every
report from the node names it; a report from an attempt that is not the current one
(or from a run that already ended) is refused and changes nothing.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from core.models import Organization
from marketplace.models import Lease
from providers.models import Node


def notify_channel(node_id: int) -> str:
    """The PostgreSQL NOTIFY channel on which a node's index moves (see selectors)."""
    return f"tandem_assignments_{int(node_id)}"


class NodeAssignmentIndex(models.Model):
    """A counter per node that moves (in the same transaction) on every change to one
    of the node's assignments that its agent must see: a new one, a claim, a start, an
    end, a stop request. The blocking query compares it with the agent's last index."""

    node = models.OneToOneField(Node, primary_key=True, on_delete=models.CASCADE, related_name="+")
    index = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"node {self.node_id} at {self.index}"


class Assignment(models.Model):
    class Kind(models.TextChoices):
        COMMAND = "command"  # a buyer's command on a raw lease (a "run")
        TRAIN = "train"  # a fine-tune job's runtime.launch (re-queued on another node)
        SERVE = "serve"  # an inference deployment's engine (runtime.serve), relayed to

    class State(models.TextChoices):
        QUEUED = "queued"  # waiting for the node's agent to claim it
        CLAIMED = "claimed"  # claimed: the agent is preparing it
        RUNNING = "running"  # the process started on the node
        SUCCEEDED = "succeeded"  # exit code 0
        FAILED = "failed"  # a non-zero exit code, a failure to start, or a lost claim
        CANCELLED = "cancelled"  # stopped on request: cancelled, or its lease ended

    LIVE_STATES = (State.QUEUED, State.CLAIMED, State.RUNNING)
    CLAIMED_STATES = (State.CLAIMED, State.RUNNING)

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+")
    lease = models.ForeignKey(Lease, on_delete=models.PROTECT, related_name="+")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # The managed workload it runs (a fine-tune job's id for kind train, a deployment's
    # for kind serve; else blank).
    workload_id = models.CharField(max_length=100, blank=True, default="")
    spec = models.JSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    attempt = models.PositiveIntegerField(default=0)  # 0: never claimed
    created_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    # The claim's last renewal (a claim or a report): a dead node's lease ends here.
    renewed_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    stop_requested = models.BooleanField(default=False)
    stop_reason = models.CharField(max_length=200, blank=True, default="")
    exit_code = models.IntegerField(null=True, blank=True)
    failure_reason = models.CharField(max_length=500, blank=True, default="")
    # Ended because its node was lost (stopped renewing, never claimed, gave it back),
    # not by what ran: a train run's next attempt is not a retry of a crash.
    lost = models.BooleanField(default=False)
    log_lines = models.PositiveIntegerField(default=0)
    log_bytes = models.BigIntegerField(default=0)
    log_lines_dropped = models.PositiveIntegerField(default=0)
    # The last batch of events applied from the current attempt (a retry is not applied).
    events_batch = models.PositiveIntegerField(default=0)
    # A gang (a train run on several nodes' leases, one torchrun per node): the members
    # queued together share ``gang`` (blank: not in a gang) and, once every member
    # has claimed, one rendezvous: member 0's ``endpoint`` (host:port its node offered
    # at the claim) hosts it. See marketplace/assignments/gangs.py.
    gang = models.CharField(max_length=64, blank=True, default="")
    gang_size = models.PositiveSmallIntegerField(default=1)
    gang_rank = models.PositiveSmallIntegerField(default=0)
    endpoint = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    state__in=["queued", "claimed", "running", "succeeded", "failed", "cancelled"]
                ),
                name="assignment_state_valid",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["command", "train", "serve"]), name="assignment_kind_valid"
            ),
            # A claimed or running assignment has a claim: an attempt and a lock.
            models.CheckConstraint(
                condition=~Q(state__in=["claimed", "running"])
                | (Q(attempt__gte=1) & Q(locked_until__isnull=False)),
                name="assignment_claimed_has_lock",
            ),
            models.CheckConstraint(
                condition=Q(gang_size__gte=1) & Q(gang_rank__lt=F("gang_size")),
                name="assignment_gang_rank_valid",
            ),
            models.UniqueConstraint(
                fields=["gang", "gang_rank"],
                condition=~Q(gang=""),
                name="assignment_gang_member_once",
            ),
        ]
        indexes = [
            models.Index(
                fields=["node", "id"],
                condition=Q(state__in=["queued", "claimed", "running"]),
                name="assignment_live_node",
            ),
            models.Index(
                fields=["locked_until"],
                condition=Q(state__in=["claimed", "running"]),
                name="assignment_claimed_lock",
            ),
            models.Index(fields=["lease", "id"], name="assignment_lease"),
            models.Index(
                fields=["workload_id", "id"],
                condition=~Q(workload_id=""),
                name="assignment_workload",
            ),
        ]

    def __str__(self) -> str:
        return f"assignment {self.pk} ({self.kind}, {self.state})"

    @property
    def is_live(self) -> bool:
        return self.state in self.LIVE_STATES


class AssignmentLogLine(models.Model):
    """One line of a run's output, in the order the node sent them (``seq`` from 1)."""

    class Stream(models.TextChoices):
        STDOUT = "stdout"
        STDERR = "stderr"

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveIntegerField()
    attempt = models.PositiveIntegerField()
    stream = models.CharField(max_length=8, choices=Stream.choices)
    text = models.TextField()
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["assignment", "seq"], name="assignment_log_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.assignment_id}#{self.seq}"


class AssignmentUpload(models.Model):
    """An artifact a node uploads for a run (a checkpoint, the final model): declared
    with its key, SHA-256 and size, written through a signed PUT URL to the blob
    ``blobs/sha256/<hex>`` (content addressed: a retried or repeated upload of the
    same bytes lands on the same blob), then committed. The commit is what records a
    checkpoint; the last committed checkpoint of a job is where its next attempt
    resumes from."""

    class Kind(models.TextChoices):
        CHECKPOINT = "checkpoint"  # <output_dir>/checkpoints/step-NNNNNN
        FINAL = "final"  # <output_dir>/final: the adapter (or model) trained
        MERGED = "merged"  # <output_dir>/merged: LoRA weights merged into the base

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="+")
    workload_id = models.CharField(max_length=100)
    attempt = models.PositiveIntegerField()
    key = models.CharField(max_length=300)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    step = models.PositiveIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    created_at = models.DateTimeField()
    committed_at = models.DateTimeField(null=True, blank=True)
    # Where the control plane unpacked it (a directory the job's records point at).
    location = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["assignment", "attempt", "key", "sha256"], name="assignment_upload_once"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["checkpoint", "final", "merged"]),
                name="assignment_upload_kind_valid",
            ),
            models.CheckConstraint(condition=Q(size__gte=0), name="assignment_upload_size"),
        ]
        indexes = [
            models.Index(
                fields=["workload_id", "kind", "step"],
                condition=Q(committed_at__isnull=False),
                name="assignment_upload_committed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.sha256[:12]})"
