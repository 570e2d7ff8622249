"""Supply tables: sites, nodes, their GPUs, telemetry (latest + per-minute rollups),
heartbeat minutes for uptime, lease outcomes for reliability, offers.

Telemetry is kept bounded on purpose: one ``GpuSample`` row per GPU (overwritten by
each heartbeat) and one ``GpuMinuteRollup`` row per GPU per minute (counts, sums and
maxima folded in with an upsert), plus one ``NodeHeartbeatMinute`` row per node per
minute. A flood of heartbeats changes counters, not the number of rows; rows older
than their retention (providers.telemetry: TELEMETRY_RETENTION, GPU_ROLLUP_RETENTION)
are deleted by ``telemetry_prune``.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from core.models import ApiKey, Organization


class Site(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    region = models.CharField(max_length=64, help_text="e.g. us-east, eu-central")
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2, upper case")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="site_name_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.region})"


class AgentKey(models.Model):
    """An API key made for a node agent (scope ``agent``). The key itself lives in core.

    ``node`` is the node the key belongs to: set by the key's first successful
    registration; from then on the key registers and reports for that node only."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    api_key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, related_name="agent_key")
    name = models.CharField(max_length=100)
    node = models.ForeignKey(
        "Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="agent_keys"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Node(models.Model):
    class Health(models.TextChoices):
        UNKNOWN = "unknown"  # registered, no heartbeat yet
        HEALTHY = "healthy"
        DEGRADED = "degraded"  # heartbeats arrive, but a GPU reports DBE ECC or XID faults
        UNHEALTHY = "unhealthy"  # heartbeats stopped for longer than the timeout

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    site = models.ForeignKey(Site, null=True, blank=True, on_delete=models.PROTECT)
    hostname = models.CharField(max_length=255)
    # The agent key that last registered this node: a node is bound to its org.
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    driver_version = models.CharField(max_length=64, blank=True, default="")
    cuda_version = models.CharField(max_length=32, blank=True, default="")
    agent_version = models.CharField(max_length=32, blank=True, default="")
    inventory_source = models.CharField(max_length=16, default="nvml")  # nvml | file
    heartbeat_interval_seconds = models.PositiveIntegerField(default=15)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_reason = models.CharField(max_length=500, blank=True, default="")
    health_changed_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_xid_at = models.DateTimeField(null=True, blank=True)
    registered_at = models.DateTimeField()
    # A cache for the matcher and buyer filters, refreshed by node_reliability_refresh;
    # the inputs are computed on demand (selectors.node_reliability).
    reliability_score = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "hostname"], name="node_host_per_org"),
            models.CheckConstraint(
                condition=Q(health__in=["unknown", "healthy", "degraded", "unhealthy"]),
                name="node_health_valid",
            ),
        ]
        indexes = [models.Index(fields=["health", "last_heartbeat_at"], name="node_health_seen")]

    def __str__(self) -> str:
        return self.hostname


class Gpu(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=96, unique=True)
    name = models.CharField(max_length=128, help_text="as NVML reports it")
    model = models.CharField(max_length=64, blank=True, default="", help_text="catalog slug")
    memory_total_mib = models.PositiveIntegerField()
    interconnect = models.CharField(max_length=16)  # nvlink | pcie
    nvlink_links = models.PositiveSmallIntegerField(default=0)
    pcie_generation = models.PositiveSmallIntegerField(null=True, blank=True)
    pcie_width = models.PositiveSmallIntegerField(null=True, blank=True)
    mig_mode = models.BooleanField(null=True, blank=True)
    # False once a later inventory no longer lists it (kept for history and offers).
    present = models.BooleanField(default=True)

    class Meta:
        ordering = ["node_id", "index"]

    def __str__(self) -> str:
        return f"{self.name} {self.uuid}"


class GpuSample(models.Model):
    """The latest telemetry of one GPU: overwritten by each heartbeat."""

    gpu = models.OneToOneField(
        Gpu, on_delete=models.CASCADE, primary_key=True, related_name="sample"
    )
    sampled_at = models.DateTimeField()
    utilization_pct = models.PositiveSmallIntegerField(null=True)
    memory_used_mib = models.PositiveIntegerField(null=True)
    temperature_c = models.SmallIntegerField(null=True)
    power_mw = models.PositiveIntegerField(null=True)
    ecc_corrected = models.BigIntegerField(null=True)
    ecc_uncorrected = models.BigIntegerField(null=True)
    xid_events = models.JSONField(default=list)

    def __str__(self) -> str:
        return f"{self.gpu_id}@{self.sampled_at}"


class GpuMinuteRollup(models.Model):
    """One GPU's telemetry folded into one minute: averages are sum / samples."""

    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE)
    minute = models.DateTimeField()
    samples = models.PositiveIntegerField(default=0)
    utilization_samples = models.PositiveIntegerField(default=0)
    utilization_sum = models.BigIntegerField(default=0)
    utilization_max = models.PositiveSmallIntegerField(null=True)
    memory_used_max_mib = models.PositiveIntegerField(null=True)
    temperature_max_c = models.SmallIntegerField(null=True)
    power_samples = models.PositiveIntegerField(default=0)
    power_sum_mw = models.BigIntegerField(default=0)
    xid_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["gpu", "minute"], name="gpu_rollup_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.gpu_id}@{self.minute}"


class NodeHeartbeatMinute(models.Model):
    """A minute in which a node sent at least one heartbeat: the input of uptime."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE)
    minute = models.DateTimeField()
    heartbeats = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node", "minute"], name="node_heartbeat_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.node_id}@{self.minute}"


class NodeLeaseOutcome(models.Model):
    """How a lease on a node ended, fed by the marketplace (node_lease_outcome_record)."""

    class Outcome(models.TextChoices):
        COMPLETED = "completed"  # ran to its end or the buyer ended it: normal
        CANCELLED_BY_BUYER = "cancelled_by_buyer"  # normal
        PREEMPTED = "preempted"  # interruptible lease preempted per its offer: normal
        NODE_FAILED = "node_failed"  # the node went away or faulted: not normal
        PROVIDER_ENDED = "provider_ended"  # forced withdrawal: not normal

    NORMAL = ("completed", "cancelled_by_buyer", "preempted")

    node = models.ForeignKey(Node, on_delete=models.CASCADE)
    lease_id = models.CharField(max_length=100, unique=True)
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    ended_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["node", "ended_at"], name="lease_outcome_node_end")]

    def __str__(self) -> str:
        return f"{self.lease_id}: {self.outcome}"


class Offer(models.Model):
    class Kind(models.TextChoices):
        ON_DEMAND = "on_demand"
        INTERRUPTIBLE = "interruptible"

    class Status(models.TextChoices):
        ACTIVE = "active"
        PAUSED = "paused"
        WITHDRAWN = "withdrawn"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="offers")
    gpu_model = models.CharField(max_length=64)
    gpu_count = models.PositiveSmallIntegerField()
    price_per_gpu_hour_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField(null=True, blank=True)  # None: open-ended
    min_lease_seconds = models.PositiveIntegerField()
    max_lease_seconds = models.PositiveIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    preemption_grace_seconds = models.PositiveIntegerField(null=True, blank=True)
    region = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField()
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    # Set only by a forced withdrawal: running leases end here, and are billed to here.
    forced_end_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="offer_gpu_count_positive"),
            models.CheckConstraint(
                condition=Q(price_per_gpu_hour_micros__gt=0), name="offer_price_positive"
            ),
            models.CheckConstraint(
                condition=Q(window_end__isnull=True) | Q(window_end__gt=models.F("window_start")),
                name="offer_window_ordered",
            ),
            models.CheckConstraint(
                condition=Q(max_lease_seconds__isnull=True)
                | Q(max_lease_seconds__gte=models.F("min_lease_seconds")),
                name="offer_lease_bounds_ordered",
            ),
            models.CheckConstraint(
                condition=Q(kind="on_demand", preemption_grace_seconds__isnull=True)
                | Q(kind="interruptible", preemption_grace_seconds__isnull=False),
                name="offer_grace_iff_interruptible",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["active", "paused", "withdrawn"]),
                name="offer_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"offer {self.pk}: {self.gpu_count}x {self.gpu_model}"


class OfferActivePeriod(models.Model):
    """A stretch during which an offer was listed (not paused, not withdrawn): the
    input of "GPU-hours listed per day"."""

    offer = models.ForeignKey(Offer, on_delete=models.CASCADE, related_name="active_periods")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["offer"], condition=Q(ended_at__isnull=True), name="offer_one_open_period"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.offer_id}: {self.started_at}..{self.ended_at}"
