"""The runtime's one table: the record of a training run.

The run itself happens on a provider's node, through its agent; this row is the
control plane's record of it (runtime/node_training.py): which node holds it at
which attempt (the assignment's fencing token), its steps and last checkpoint, its
outcome. Steps are billed by id, so the steps redone after a resume on another node
are not billed again.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from core.models import Organization


class TrainingRun(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    job_id = models.CharField(max_length=100, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT)
    spec = models.JSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    attempt = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    steps_done = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    checkpoint_step = models.PositiveIntegerField(default=0)
    model_location = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                name="training_run_state_valid",
            ),
            models.CheckConstraint(
                condition=~Q(state="running") | ~Q(claimed_by=""),
                name="training_run_running_is_claimed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} ({self.state})"
