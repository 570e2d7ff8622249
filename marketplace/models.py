"""Demand tables: orders (what a buyer asks for) and leases (what they got: GPUs of
one offer on one node, for a price), with the GPUs of each lease.

No GPU is in two live leases: ``LeaseGpu`` rows are ``live`` while their lease is
pending or active, and a unique index over live rows' GPUs makes the database refuse
a second one (PostgreSQL and SQLite both support partial unique indexes), whatever
two matchers running at once decide.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from core.models import Organization
from providers.models import Gpu, Node, Offer


class Order(models.Model):
    class Kind(models.TextChoices):
        ON_DEMAND = "on_demand"
        INTERRUPTIBLE = "interruptible"

    class TimeInForce(models.TextChoices):
        IOC = "ioc"  # immediate or cancel: matched in the next round, or expired
        STANDING = "standing"  # waits in the book until matched, cancelled or its deadline

    class Workload(models.TextChoices):
        RAW = "raw"  # a raw GPU lease: billed by GPU-second
        FINE_TUNE = "fine_tune"  # managed work, billed per token
        INFERENCE = "inference"

    class State(models.TextChoices):
        OPEN = "open"  # in the book
        FILLED = "filled"  # its leases are live
        COMPLETED = "completed"  # its leases ended
        CANCELLED = "cancelled"
        EXPIRED = "expired"  # unmatched by its deadline (or at once, for ioc)

    LIVE_STATES = (State.OPEN, State.FILLED)

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    time_in_force = models.CharField(max_length=16, choices=TimeInForce.choices)
    workload_kind = models.CharField(max_length=16, choices=Workload.choices)
    workload_id = models.CharField(max_length=200, blank=True, default="")
    gpu_models = models.JSONField(help_text="acceptable catalog slugs")
    gpu_model_at_least = models.CharField(max_length=64, blank=True, default="")
    gpus_per_node = models.PositiveSmallIntegerField()
    node_count = models.PositiveSmallIntegerField(default=1)
    min_gpu_memory_gib = models.PositiveIntegerField(default=0)
    interconnect = models.CharField(max_length=16, blank=True, default="")
    regions = models.JSONField(default=list, blank=True)
    countries = models.JSONField(default=list, blank=True)
    min_reliability = models.FloatField(null=True, blank=True)
    duration_seconds = models.PositiveIntegerField(null=True, blank=True)  # None: open-ended
    # What is left to run after a preemption or a failure put the order back.
    remaining_seconds = models.PositiveIntegerField(null=True, blank=True)
    earliest_start = models.DateTimeField()
    deadline = models.DateTimeField(null=True, blank=True)
    limit_price_per_gpu_hour_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    # The credit reserved while the order waits in the book (a ledger hold).
    reservation_hold_id = models.CharField(max_length=200, blank=True, default="")
    reserved_micros = models.BigIntegerField(default=0)
    reservations = models.PositiveIntegerField(default=0)
    placed_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=200, blank=True, default="")
    requeues = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["open", "filled", "completed", "cancelled", "expired"]),
                name="order_state_valid",
            ),
            models.CheckConstraint(condition=Q(gpus_per_node__gte=1), name="order_gpus_positive"),
            models.CheckConstraint(condition=Q(node_count__gte=1), name="order_nodes_positive"),
            models.CheckConstraint(
                condition=Q(limit_price_per_gpu_hour_micros__gt=0), name="order_limit_positive"
            ),
            models.CheckConstraint(
                condition=Q(deadline__isnull=True) | Q(deadline__gt=models.F("earliest_start")),
                name="order_deadline_after_start",
            ),
        ]
        indexes = [
            models.Index(
                fields=["limit_price_per_gpu_hour_micros", "id"],
                condition=Q(state="open"),
                name="order_open_book",
            ),
            models.Index(fields=["organization", "id"], name="order_org"),
        ]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.state})"

    @property
    def stream_id(self) -> str:
        return f"order-{self.pk}"

    @property
    def managed(self) -> bool:
        return self.workload_kind != self.Workload.RAW

    @property
    def gpus_total(self) -> int:
        return self.gpus_per_node * self.node_count


class Lease(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"  # GPUs allocated, starts at starts_at
        ACTIVE = "active"
        ENDED = "ended"
        PREEMPTED = "preempted"
        FAILED = "failed"
        CANCELLED = "cancelled"  # ended before it started: nothing billed

    LIVE_STATES = (State.PENDING, State.ACTIVE)

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="leases")
    # Leases allocated together for one gang share it (order id and round).
    allocation = models.CharField(max_length=64)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    offer = models.ForeignKey(Offer, on_delete=models.PROTECT, related_name="+")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Order.Kind.choices)
    managed = models.BooleanField(default=False)
    gpu_model = models.CharField(max_length=64)
    gpu_count = models.PositiveSmallIntegerField()
    price_per_gpu_hour_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)  # planned end; None: open-ended
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=200, blank=True, default="")
    # Billing: one hold per window (fixed-length leases have one; open-ended ones
    # renew a window at a time). Settled to ``billed_until``.
    window = models.PositiveIntegerField(default=1)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    hold_micros = models.BigIntegerField(default=0)
    billed_until = models.DateTimeField(null=True, blank=True)
    gpu_seconds_billed = models.BigIntegerField(default=0)
    billed_micros = models.BigIntegerField(default=0)
    # Preemption: the notice went out at ``preemption_noticed_at``; the lease ends
    # at ``preempt_at`` (the offer's grace period later) for ``preempted_for``.
    preemption_noticed_at = models.DateTimeField(null=True, blank=True)
    preempt_at = models.DateTimeField(null=True, blank=True)
    preempted_for = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    state__in=["pending", "active", "ended", "preempted", "failed", "cancelled"]
                ),
                name="lease_state_valid",
            ),
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="lease_gpus_positive"),
            models.CheckConstraint(
                condition=Q(price_per_gpu_hour_micros__gt=0), name="lease_price_positive"
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "id"], name="lease_buyer"),
            models.Index(fields=["provider", "id"], name="lease_provider"),
            models.Index(
                fields=["node"],
                condition=Q(state__in=["pending", "active"]),
                name="lease_live_node",
            ),
        ]

    def __str__(self) -> str:
        return f"lease {self.pk} ({self.state})"

    @property
    def stream_id(self) -> str:
        return f"lease-{self.pk}"

    @property
    def usage_subject(self) -> str:
        """The ``subject.lease`` of this lease's usage events (GPU-seconds, tokens)."""
        return f"lease-{self.pk}"

    @property
    def hold_id(self) -> str:
        return f"{self.usage_subject}:w{self.window}"


class LeaseGpu(models.Model):
    lease = models.ForeignKey(Lease, on_delete=models.CASCADE, related_name="gpus")
    gpu = models.ForeignKey(Gpu, on_delete=models.PROTECT, related_name="+")
    gpu_uuid = models.CharField(max_length=96)
    live = models.BooleanField(default=True)

    class Meta:
        constraints = [
            # The database's own guarantee that no GPU is in two live leases.
            models.UniqueConstraint(
                fields=["gpu"], condition=Q(live=True), name="lease_gpu_one_live_lease"
            ),
            models.UniqueConstraint(fields=["lease", "gpu"], name="lease_gpu_once"),
        ]

    def __str__(self) -> str:
        return f"{self.gpu_uuid} in lease {self.lease_id}"
