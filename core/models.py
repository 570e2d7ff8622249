"""Tables of the shared kernel: tenancy (organizations, memberships, API keys)
and the event store (events, follower tracking, idempotent requests)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Organization(models.Model):
    """A tenant. A provider sells capacity, a buyer buys it; a research center may do both."""

    class Kind(models.TextChoices):
        BUYER = "buyer"
        PROVIDER = "provider"
        BOTH = "both"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # The organization that runs this Tandem installation: its finance staff read
    # platform-wide reports (trial balance, exports). At most one.
    is_operator = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["buyer", "provider", "both"]), name="org_kind_valid"
            ),
            models.UniqueConstraint(
                fields=["is_operator"], condition=Q(is_operator=True), name="org_single_operator"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_buyer(self) -> bool:
        return self.kind in (self.Kind.BUYER, self.Kind.BOTH)

    @property
    def is_provider(self) -> bool:
        return self.kind in (self.Kind.PROVIDER, self.Kind.BOTH)


class Membership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin"
        MEMBER = "member"
        FINANCE = "finance"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="membership_unique"),
            models.CheckConstraint(
                condition=Q(role__in=["admin", "member", "finance"]), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.organization_id}:{self.role}"


class ApiKey(models.Model):
    """An API key: ``tdm_<prefix>_<secret>``. Only the SHA-256 of the whole key is stored;
    the prefix finds the row and is safe to show in lists.

    ``scope`` says what the key may reach: an ``org`` key acts for its organization
    with its ``role``; an ``agent`` key lives on one GPU node and reaches only the agent
    API (/api/v1/agent/...), for the node it is bound to (providers.AgentKey.node)."""

    class Scope(models.TextChoices):
        ORG = "org"
        AGENT = "agent"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    name = models.CharField(max_length=100, default="default")
    role = models.CharField(
        max_length=16, choices=Membership.Role.choices, default=Membership.Role.ADMIN
    )
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.ORG)
    prefix = models.CharField(max_length=16, unique=True)
    hashed_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(role__in=["admin", "member", "finance"]), name="apikey_role_valid"
            ),
            models.CheckConstraint(
                condition=Q(scope__in=["org", "agent"]), name="apikey_scope_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"


class Event(models.Model):
    """One fact, appended once, never changed (UPDATE and DELETE are refused by triggers).

    ``position`` is global and assigned in commit order: appends take an exclusive
    lock on this table just before inserting (see core.eventstore), so a follower
    reading by position never skips a row that commits later.
    """

    position = models.BigAutoField(primary_key=True)
    # Reads by tenant go through the idempotency constraints' indexes; a separate
    # tenant index would cost every append and serve no query.
    tenant = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_constraint=False,
        db_index=False,
    )
    stream_type = models.CharField(max_length=64)
    stream_id = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    type = models.CharField(max_length=100)
    schema_version = models.PositiveSmallIntegerField(default=1)
    payload = models.JSONField()
    metadata = models.JSONField(default=dict)
    # NULL, not "": the partial unique constraints below skip events without a key.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stream_id", "version"], name="event_stream_version"),
            # Unique per tenant; platform events (no tenant) share one namespace.
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False, tenant__isnull=False),
                name="event_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False, tenant__isnull=True),
                name="event_platform_idempotency_key",
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="event_version_positive"),
        ]
        indexes = [models.Index(fields=["stream_type", "position"], name="event_type_pos")]

    def __str__(self) -> str:
        return f"#{self.position} {self.stream_id}@{self.version} {self.type}"


class FollowerPosition(models.Model):
    """How far a follower has read. Written in the same transaction as its effects."""

    consumer = models.CharField(max_length=100, unique=True)
    position = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.consumer}@{self.position}"


class IdempotentRequest(models.Model):
    """The first response to a POST carrying an ``Idempotency-Key`` header."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    key = models.CharField(max_length=200)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "key"], name="idempotent_request_key"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.key}]"
