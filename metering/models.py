"""Usage events and the periods they count in.

``UsageEvent`` is append-only (a trigger refuses UPDATE and DELETE on PostgreSQL) and
de-duplicated for all time by ``(producer_org_id, source, event_id)``: the producer is
the organization whose key sent the event (0 for the platform's own producers), so
two tenants' ids never collide and no tenant can pre-empt another's ids.

``buyer_id`` carries no foreign-key constraint: the ingest path checks the subject
against the organizations it may bill before inserting, and a per-row RI trigger
would cost more than the insert itself at the volumes this table takes.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from core.models import Organization

PLATFORM_PRODUCER = 0  # producer_org_id of internal producers (runtime, marketplace)


class UsageEvent(models.Model):
    class SubjectKind(models.TextChoices):
        JOB = "job"
        DEPLOYMENT = "deployment"
        LEASE = "lease"

    id = models.BigAutoField(primary_key=True)
    producer_org_id = models.BigIntegerField()
    source = models.CharField(max_length=200)
    event_id = models.CharField(max_length=200)
    type = models.CharField(max_length=64)
    # No index of its own: usage_buyer_time leads with it (one index less to keep
    # up on every insert).
    buyer = models.ForeignKey(
        Organization,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    subject_kind = models.CharField(max_length=16, choices=SubjectKind.choices)
    subject_id = models.CharField(max_length=200)
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField()
    # First day of the month the event counts in; later than occurred_at's month
    # when that month was already closed for the buyer (see ``note``).
    period = models.DateField()
    quantity = models.BigIntegerField()
    dimensions = models.JSONField(default=dict)
    note = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["producer_org_id", "source", "event_id"], name="usage_event_unique_id"
            ),
            models.CheckConstraint(
                condition=Q(quantity__gte=0), name="usage_quantity_non_negative"
            ),
            models.CheckConstraint(
                condition=Q(subject_kind__in=["job", "deployment", "lease"]),
                name="usage_subject_kind_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["buyer", "occurred_at"], name="usage_buyer_time"),
            # A lease's GPU-seconds so far and their latest time, for the bound on what
            # a lease may be billed (metering.lease_bounds._leases_within_bounds): read
            # from the index alone. Only lease rows (a tenth of the usual usage).
            models.Index(
                fields=["subject_id", "quantity", "occurred_at"],
                name="usage_lease_gpu_seconds",
                condition=Q(subject_kind="lease"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source}/{self.event_id} {self.type} x{self.quantity}"


class ClosedPeriod(models.Model):
    """A buyer's month that invoicing has closed: usage for it goes to the next open one."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    period = models.DateField(help_text="the first day of the month")
    closed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "period"], name="closed_period_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.period:%Y-%m} closed"
