"""Tables of buyer workloads: uploaded files, fine-tune jobs (with their events and
checkpoints) and inference deployments.

Every row belongs to one organization and is found by its public id (``file-…``,
``ft-…``); a lookup always names the organization too, so another tenant's id is
simply not found. One job table serves both API shapes (OpenAI's and Together's):
the shapes differ in field and status names, not in what a job is. One module of
~600 lines, as Django expects an app's tables in one place.
"""

from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q

from core.models import Organization


def new_public_id(prefix: str) -> str:
    # 96 random bits: unguessable, so an id leaks nothing about volume or order.
    return f"{prefix}-{secrets.token_hex(12)}"


class File(models.Model):
    """An uploaded dataset (or any file a buyer stores for a workload).

    ``status`` is the validation state: ``uploaded`` until the bytes are checked,
    then ``processed`` or ``error`` (with ``error_message`` naming the line and
    field). A Together upload first creates the row with ``awaiting_bytes`` (the
    client PUTs the bytes to a signed URL, then asks for preprocessing).
    """

    class Status(models.TextChoices):
        AWAITING_BYTES = "awaiting_bytes"
        UPLOADED = "uploaded"
        PROCESSED = "processed"
        ERROR = "error"

    public_id = models.CharField(max_length=40, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT)
    purpose = models.CharField(max_length=32)
    filename = models.CharField(max_length=255)
    file_type = models.CharField(max_length=16, default="jsonl")
    bytes = models.BigIntegerField(default=0)
    # SHA-256 of the content, hex; Together's client sends it before the bytes.
    checksum = models.CharField(max_length=64, blank=True, default="")
    storage_key = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED)
    error_message = models.TextField(blank=True, default="")
    dataset_format = models.CharField(max_length=32, blank=True, default="")
    examples = models.PositiveIntegerField(null=True, blank=True)
    # Tokens per base model, filled the first time a job or an estimate needs them:
    # {"tandem/tiny-llama": 1234}. The tokenizer is the model's, so counts differ.
    token_counts = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["awaiting_bytes", "uploaded", "processed", "error"]),
                name="workload_file_status_valid",
            ),
            models.CheckConstraint(condition=Q(bytes__gte=0), name="workload_file_bytes_positive"),
        ]
        indexes = [models.Index(fields=["organization", "-id"], name="workload_file_org")]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.filename})"


class FineTuneJob(models.Model):
    """A fine-tune of a base model on a buyer's file, run by the runtime on a lease."""

    class Status(models.TextChoices):
        VALIDATING_FILES = "validating_files"
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})

    public_id = models.CharField(max_length=40, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT)
    model = models.CharField(max_length=200)
    training_file = models.ForeignKey(File, on_delete=models.PROTECT, related_name="+")
    validation_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    method = models.CharField(max_length=16, default="sft")  # sft | dpo
    training_type = models.CharField(max_length=8, default="lora")  # lora | full
    # Everything the trainer needs, resolved (no "auto" left): n_epochs, batch_size,
    # learning_rate, lr_scheduler, warmup_ratio, weight_decay, max_grad_norm,
    # n_checkpoints, n_evals, lora_r, lora_alpha, lora_dropout, lora_trainable_modules,
    # train_on_inputs. ``requested`` keeps what the caller sent, "auto" included.
    hyperparameters = models.JSONField(default=dict)
    requested = models.JSONField(default=dict)
    suffix = models.CharField(max_length=64, blank=True, default="")
    seed = models.BigIntegerField()
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    fine_tuned_model = models.CharField(max_length=255, null=True, blank=True, unique=True)
    currency = models.CharField(max_length=3)
    estimate_micros = models.BigIntegerField(default=0)
    training_tokens = models.BigIntegerField(default=0)
    validation_tokens = models.BigIntegerField(default=0)
    trained_tokens = models.BigIntegerField(null=True, blank=True)
    steps_completed = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(null=True, blank=True)
    # The marketplace order and lease running it (ids in the order book).
    order_ref = models.CharField(max_length=64, blank=True, default="")
    lease_ref = models.CharField(max_length=64, blank=True, default="")
    gpu_count = models.PositiveSmallIntegerField(default=1)
    # The checkpoint the job's weights start from, "<job id>:<step>" of another job of
    # the organization (Together's from_checkpoint; workloads/checkpoints.py); "" for
    # a job that starts from its base model.
    from_checkpoint = models.CharField(max_length=64, blank=True, default="")
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "validating_files",
                        "queued",
                        "running",
                        "succeeded",
                        "failed",
                        "cancelled",
                    ]
                ),
                name="workload_job_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(method__in=["sft", "dpo"]), name="workload_job_method_valid"
            ),
            models.CheckConstraint(
                condition=Q(training_type__in=["lora", "full"]), name="workload_job_type_valid"
            ),
            models.CheckConstraint(
                condition=Q(estimate_micros__gte=0), name="workload_job_estimate_positive"
            ),
        ]
        indexes = [models.Index(fields=["organization", "-id"], name="workload_job_org")]

    def __str__(self) -> str:
        return f"{self.public_id} {self.model} {self.status}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class FineTuneEvent(models.Model):
    """One line of a job's progress, as the API lists it. Projected from the event
    store (``source_position`` makes the projection idempotent) or written by the
    job's own transitions."""

    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="events")
    public_id = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField()
    level = models.CharField(max_length=8, default="info")  # info | warn | error
    # Together's event type names (job_start, checkpoint_save, ...); OpenAI shows
    # "message" or "metrics".
    type = models.CharField(max_length=40)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    source_position = models.BigIntegerField(null=True, blank=True, unique=True)

    class Meta:
        indexes = [models.Index(fields=["job", "-id"], name="workload_job_event")]

    def __str__(self) -> str:
        return f"{self.job_id}: {self.message}"


class FineTuneCheckpoint(models.Model):
    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="checkpoints")
    public_id = models.CharField(max_length=40, unique=True)
    step = models.PositiveIntegerField()
    is_final = models.BooleanField(default=False)
    # Storage locations of the artifacts, as the runtime reported them.
    adapter_path = models.CharField(max_length=500, blank=True, default="")
    merged_path = models.CharField(max_length=500, blank=True, default="")
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "step"], name="workload_checkpoint_step"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}@{self.step}"


class Deployment(models.Model):
    """A long-lived inference engine for one model, on a marketplace lease.

    Base models are served by platform deployments (``organization`` null) shared by
    every buyer; a fine-tuned model by a deployment of its owner. ``starting`` until
    its order (``order_ref``) is leased (``lease_ref``) and a serving process has
    loaded the engine; then ``ready``. Requests route to the ready deployment of their
    model; one idle past ``idle_timeout_seconds`` is stopped (its engine unloaded, its
    lease ended), and so is one whose lease ends under it.
    """

    class Status(models.TextChoices):
        STARTING = "starting"
        READY = "ready"
        STOPPED = "stopped"

    class Capacity(models.TextChoices):
        # Online requests: an on-demand lease, never preempted.
        ON_DEMAND = "on_demand"
        # Batches: an interruptible lease on spare GPUs, cheaper and preemptible.
        INTERRUPTIBLE = "interruptible"

    public_id = models.CharField(max_length=40, unique=True)
    organization = models.ForeignKey(Organization, null=True, blank=True, on_delete=models.PROTECT)
    model = models.CharField(max_length=255)
    capacity = models.CharField(max_length=16, choices=Capacity.choices, default=Capacity.ON_DEMAND)
    base_model = models.CharField(max_length=200)
    adapter_path = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STARTING)
    order_ref = models.CharField(max_length=64, blank=True, default="")
    lease_ref = models.CharField(max_length=64, blank=True, default="")
    idle_timeout_seconds = models.PositiveIntegerField()
    requests_served = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    last_request_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # A replica of a dedicated deployment (its lease is the buyer's, billed per
    # minute); None for the deployments of per-token inference.
    dedicated = models.ForeignKey(
        "DedicatedDeployment",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="replicas",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["starting", "ready", "stopped"]),
                name="workload_deployment_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(capacity__in=["on_demand", "interruptible"]),
                name="workload_deployment_capacity_valid",
            ),
            # At most one live deployment per model and capacity: concurrent first
            # requests for a cold model start one engine, not several (batches run on
            # the model's interruptible one, online requests on its on-demand one).
            models.UniqueConstraint(
                fields=["model", "capacity"],
                condition=~Q(status="stopped"),
                name="workload_deployment_one_live_per_model",
            ),
        ]
        indexes = [
            # The follower finds a live deployment by its lease when a lease closes.
            models.Index(
                fields=["lease_ref"],
                condition=~Q(status="stopped"),
                name="workload_deployment_live_lease",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.model} {self.status}"


class DedicatedEndpoint(models.Model):
    """A dedicated endpoint (Together's ``client.endpoints``): a stable name a buyer's
    requests use as ``model``, routed to the ready replicas of its deployments in
    proportion to their weights (``traffic_split``: ``[{"deployment_id", "weight"}]``).
    ``version`` is the etag: every write bumps it, and a write naming an older one is
    refused. Deleting sets ``deleted_at``: the name is free again."""

    class Visibility(models.TextChoices):
        PRIVATE = "VISIBILITY_PRIVATE"
        INTERNAL = "VISIBILITY_INTERNAL"

    public_id = models.CharField(max_length=40, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT)
    name = models.CharField(max_length=100)
    visibility = models.CharField(
        max_length=24, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    traffic_split = models.JSONField(default=list, blank=True)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"],
                condition=Q(deleted_at__isnull=True),
                name="workload_endpoint_one_live_name",
            ),
        ]
        indexes = [models.Index(fields=["organization", "-id"], name="workload_endpoint_org")]

    def __str__(self) -> str:
        return f"{self.public_id} {self.name}"


class DedicatedDeployment(models.Model):
    """A model served on pinned hardware under a dedicated endpoint, in replicas.

    Each replica is an inference ``Deployment`` (``replicas``) on its own raw lease:
    a standing on-demand order for ``gpu_count`` GPUs of ``gpu_model`` (in ``region``
    when one is named), billed to the buyer per minute at the lease price plus the
    platform fee (marketplace/workloads/dedicated.py). It keeps ``desired_replicas``
    leased, which the autoscaler (marketplace/workloads/autoscaling.py) moves between
    ``min_replicas`` and ``max_replicas`` with the load: the in-flight requests per
    replica against ``inflight_target``, a higher recommendation held through
    ``scale_up_window_seconds``, a lower one through ``scale_down_window_seconds``
    (``recommendations``: the recent ones, ``[iso time, replicas]`` from when each
    began). Both bounds 0 stop it. With ``idle_timeout_seconds`` set, a deployment
    that served no request for that long ends its leases (``idle_stopped_at``) until
    the next request wakes it."""

    public_id = models.CharField(max_length=40, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT)
    endpoint = models.ForeignKey(
        DedicatedEndpoint, on_delete=models.PROTECT, related_name="deployments"
    )
    name = models.CharField(max_length=100)
    model = models.CharField(max_length=255)
    base_model = models.CharField(max_length=200)
    adapter_path = models.CharField(max_length=500, blank=True, default="")
    gpu_model = models.CharField(max_length=64)
    gpu_count = models.PositiveSmallIntegerField()
    region = models.CharField(max_length=64, blank=True, default="")
    min_replicas = models.PositiveSmallIntegerField()
    max_replicas = models.PositiveSmallIntegerField()
    idle_timeout_seconds = models.PositiveIntegerField(default=0)  # 0: never
    desired_replicas = models.PositiveSmallIntegerField(default=0)
    # Requests in flight per replica the autoscaler aims at (Together's
    # inflight_requests metric, METRIC_TARGET_TYPE_AVERAGE_VALUE).
    inflight_target = models.FloatField(default=16.0)
    inflight_target_given = models.BooleanField(default=False)  # scalingMetrics named it
    scale_up_window_seconds = models.PositiveIntegerField(default=0)
    scale_down_window_seconds = models.PositiveIntegerField(default=300)
    recommendations = models.JSONField(default=list, blank=True)
    # Together's ScalingRules per direction ({"policies": [...], "selectPolicy": ...};
    # {}: none, the count moves in one step), and the autoscaler's recent changes
    # they limit ([iso time, signed change]).
    scale_up_rules = models.JSONField(default=dict, blank=True)
    scale_down_rules = models.JSONField(default=dict, blank=True)
    scale_events = models.JSONField(default=list, blank=True)
    inflight_sampled = models.PositiveIntegerField(default=0)  # at the last tick
    # Why the autoscaler could not place a replica it wanted above min_replicas (the
    # order book refused it: credit, capacity); cleared once it has them all.
    scaling_error = models.CharField(max_length=300, blank=True, default="")
    limit_price_per_gpu_hour_micros = models.BigIntegerField()
    version = models.PositiveIntegerField(default=1)
    failure_reason = models.CharField(max_length=300, blank=True, default="")
    last_request_at = models.DateTimeField(null=True, blank=True)
    idle_stopped_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "name"],
                condition=Q(deleted_at__isnull=True),
                name="workload_dedicated_one_live_name",
            ),
            models.CheckConstraint(
                condition=Q(max_replicas__gte=models.F("min_replicas")),
                name="workload_dedicated_replicas_ordered",
            ),
            models.CheckConstraint(
                condition=Q(gpu_count__gte=1), name="workload_dedicated_gpus_positive"
            ),
            models.CheckConstraint(
                condition=Q(inflight_target__gt=0), name="workload_dedicated_target_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.model} x{self.min_replicas}"


class RelayRequest(models.Model):
    """An inference request waiting on its deployment's queue in the database (the
    relay's embedded default; with Redis configured the queue is a Redis list and
    this table stays empty). ``taken_at`` is set by the claim of the node that
    serves it; the gateway deletes the row, and its replies, when it is done."""

    deployment_id = models.CharField(max_length=40)
    request_id = models.CharField(max_length=80, unique=True)
    payload = models.JSONField()
    created_at = models.DateTimeField()
    taken_at = models.DateTimeField(null=True, blank=True)
    taken_by = models.CharField(max_length=40, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(
                fields=["deployment_id", "id"],
                condition=Q(taken_at__isnull=True),
                name="workload_relay_waiting",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} on {self.deployment_id}"


class InflightRequest(models.Model):
    """A request on its way through the gateway to a replica of a dedicated
    deployment (``dedicated_id``), from its submission until its last reply: the
    autoscaler's load, counted here by the embedded default (with Redis configured,
    a sorted set per deployment holds them and this table stays empty). Deleted
    when the request ends, however it ends; a row left by a process that died
    mid-request stops counting after marketplace/workloads/inflight.py's TTL."""

    dedicated_id = models.BigIntegerField()
    request_id = models.CharField(max_length=80)
    started_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["dedicated_id", "request_id"], name="workload_inflight_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} in flight on {self.dedicated_id}"


class RelayReply(models.Model):
    """One reply of a node to a relayed request (a chunk, the accept, an error), in
    the order the node sent them; read and deleted by the gateway."""

    deployment_id = models.CharField(max_length=40)
    request_id = models.CharField(max_length=80)
    payload = models.JSONField()

    class Meta:
        indexes = [models.Index(fields=["request_id", "id"], name="workload_relay_reply")]

    def __str__(self) -> str:
        return f"reply {self.pk} to {self.request_id}"


class Batch(models.Model):
    """An OpenAI batch: the requests of one uploaded JSONL file (``purpose=batch``),
    run on interruptible capacity at the price book's batch discount. The requests
    are rows (``BatchRequest``), so progress survives any process; the results go
    to an output and an error file when the batch finalizes."""

    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    TERMINAL = frozenset({Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED})

    public_id = models.CharField(max_length=40, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT)
    input_file = models.ForeignKey(File, on_delete=models.PROTECT, related_name="+")
    output_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    error_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    endpoint = models.CharField(max_length=40)
    completion_window = models.CharField(max_length=8, default="24h")
    model = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices)
    metadata = models.JSONField(null=True, blank=True)
    # {"object": "list", "data": [{code, line, message, param}]} when it failed.
    errors = models.JSONField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)
    # The one runner working on it: claimed with a conditional update, renewed while
    # it runs; a runner that died is replaced once ``runner_until`` passes.
    runner_token = models.CharField(max_length=32, blank=True, default="")
    runner_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "validating",
                        "failed",
                        "in_progress",
                        "finalizing",
                        "completed",
                        "expired",
                        "cancelling",
                        "cancelled",
                    ]
                ),
                name="workload_batch_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "-id"], name="workload_batch_org"),
            models.Index(
                fields=["id"],
                condition=Q(status__in=["in_progress", "finalizing", "cancelling"]),
                name="workload_batch_live",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.status}"


class BatchRequest(models.Model):
    """One line of a batch's input file. ``pending`` until a runner claims it
    (``running``, with its token and a deadline: a claim whose runner died is
    taken again after it); then ``completed`` or ``failed`` with the response the
    online route would have given, or ``cancelled`` / ``expired`` unrun. Its usage
    is recorded under its own id, so it is billed once however often it ran."""

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        EXPIRED = "expired"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="requests")
    public_id = models.CharField(max_length=40, unique=True)
    line = models.PositiveIntegerField()
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    claimed_by = models.CharField(max_length=32, blank=True, default="")
    claimed_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    # The output file's ``response`` as JSON text, ASCII with escapes: generated text
    # may hold characters (NUL) that PostgreSQL's jsonb refuses.
    response = models.TextField(blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    state__in=["pending", "running", "completed", "failed", "cancelled", "expired"]
                ),
                name="workload_batch_request_state_valid",
            ),
            models.UniqueConstraint(fields=["batch", "line"], name="workload_batch_request_line"),
            models.UniqueConstraint(
                fields=["batch", "custom_id"], name="workload_batch_request_custom_id"
            ),
        ]
        indexes = [
            models.Index(
                fields=["batch", "line"],
                condition=Q(state__in=["pending", "running"]),
                name="workload_batch_request_open",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.batch_id} line {self.line} {self.state}"
