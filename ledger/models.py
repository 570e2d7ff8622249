"""The ledger's tables: accounts, their balances (a projection of the journal),
postings and two-phase holds. The journal entries themselves are events in the
core event store (``ledger.entry:<transfer id>``). Tables keep their ``billing_``
names (``Meta.db_table``): they predate the apps' split."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from core.models import Event, Organization


class Account(models.Model):
    class Kind(models.TextChoices):
        # per buyer
        CREDIT = "credit"  # prepaid balance: a liability to the buyer
        RECEIVABLE = "receivable"  # what a postpaid buyer owes
        # per provider
        PAYABLE = "payable"  # what the platform owes the provider
        # platform
        REVENUE = "revenue"
        FEES = "fees"
        STRIPE_CLEARING = "stripe_clearing"
        PROMO = "promo"  # free credits given away (an expense)
        ROUNDING = "rounding"
        TAX_PAYABLE = "tax_payable"
        ADJUSTMENTS = "adjustments"  # the other side of manual corrections
        # what the platform pays providers for GPU time behind managed work (fine-tunes,
        # inference), which buyers pay for per token instead (an expense)
        COST_OF_REVENUE = "cost_of_revenue"

    class Side(models.TextChoices):
        DEBIT = "D"
        CREDIT = "C"

    # The side on which each kind's balance normally grows.
    NORMAL_SIDE = {
        Kind.CREDIT: Side.CREDIT,
        Kind.RECEIVABLE: Side.DEBIT,
        Kind.PAYABLE: Side.CREDIT,
        Kind.REVENUE: Side.CREDIT,
        Kind.FEES: Side.CREDIT,
        Kind.STRIPE_CLEARING: Side.DEBIT,
        Kind.PROMO: Side.DEBIT,
        Kind.ROUNDING: Side.CREDIT,
        Kind.TAX_PAYABLE: Side.CREDIT,
        Kind.ADJUSTMENTS: Side.DEBIT,
        Kind.COST_OF_REVENUE: Side.DEBIT,
    }
    ORG_KINDS = {Kind.CREDIT, Kind.RECEIVABLE, Kind.PAYABLE}

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )  # null: a platform account
    kind = models.CharField(max_length=32, choices=Kind.choices)
    currency = models.CharField(max_length=3)
    normal_side = models.CharField(max_length=1, choices=Side.choices)
    # How far the balance may fall below zero on its normal side; null: no limit.
    # A buyer's prepaid credit has 0 unless finance gives the org a credit limit.
    overdraft_limit_micros = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "billing_account"
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "kind", "currency"],
                condition=Q(organization__isnull=False),
                name="account_unique_per_org_kind_currency",
            ),
            models.UniqueConstraint(
                fields=["kind", "currency"],
                condition=Q(organization__isnull=True),
                name="account_unique_platform_kind_currency",
            ),
            models.CheckConstraint(
                condition=Q(overdraft_limit_micros__isnull=True) | Q(overdraft_limit_micros__gte=0),
                name="account_overdraft_limit_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(normal_side__in=["D", "C"]), name="account_normal_side_valid"
            ),
        ]

    def __str__(self) -> str:
        owner = self.organization.name if self.organization is not None else "platform"
        return f"{owner}:{self.kind}:{self.currency}"


class Balance(models.Model):
    account = models.OneToOneField(Account, primary_key=True, on_delete=models.PROTECT)
    debits_posted = models.BigIntegerField(default=0)
    credits_posted = models.BigIntegerField(default=0)
    debits_pending = models.BigIntegerField(default=0)
    credits_pending = models.BigIntegerField(default=0)
    position = models.BigIntegerField(default=0)  # the last event applied

    class Meta:
        db_table = "billing_balance"
        constraints = [
            models.CheckConstraint(
                condition=Q(debits_posted__gte=0)
                & Q(credits_posted__gte=0)
                & Q(debits_pending__gte=0)
                & Q(credits_pending__gte=0),
                name="balance_counters_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"balance of account {self.account_id} @ {self.position}"

    @property
    def credit_side_available(self) -> int:
        """For an account whose normal side is credit (a buyer's prepaid credit, a
        provider's payable): posted, less what pending debits hold. The rule of
        ``ledger.projection.BalanceState.available`` for that side."""
        return self.credits_posted - self.debits_posted - self.debits_pending


class Posting(models.Model):
    # The journal entry is the core event with this position. Both references are
    # checked by the statement-level trigger (one join over the new rows) rather
    # than by per-row foreign-key triggers, which cost more than the insert.
    entry = models.ForeignKey(
        Event,
        on_delete=models.PROTECT,
        related_name="+",
        db_column="entry_position",
        db_constraint=False,
    )
    # Indexed by (account, recorded_at) below; a lone account index would be redundant.
    account = models.ForeignKey(
        Account,
        on_delete=models.PROTECT,
        related_name="postings",
        db_constraint=False,
        db_index=False,
    )
    currency = models.CharField(max_length=3)
    side = models.CharField(max_length=1, choices=Account.Side.choices)
    amount_micros = models.BigIntegerField()
    recorded_at = models.DateTimeField()

    class Meta:
        db_table = "billing_posting"
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micros__gt=0), name="posting_amount_positive"
            ),
            models.CheckConstraint(condition=Q(side__in=["D", "C"]), name="posting_side_valid"),
        ]
        indexes = [
            models.Index(fields=["account", "recorded_at"], name="posting_account_time"),
        ]

    def __str__(self) -> str:
        return f"#{self.entry_id} {self.side} {self.amount_micros} {self.currency}"


class Hold(models.Model):
    """A pending transfer: reserves ``amount`` from ``debit_account`` until it is
    posted (fully or partly), voided, or expires. It resolves exactly once."""

    class State(models.TextChoices):
        PENDING = "pending"
        POSTED = "posted"
        VOIDED = "voided"
        EXPIRED = "expired"

    hold_id = models.CharField(max_length=200, unique=True)
    debit_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    credit_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3)
    amount_micros = models.BigIntegerField()
    posted_micros = models.BigIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_hold"
        constraints = [
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="hold_amount_positive"),
            models.CheckConstraint(
                condition=Q(posted_micros__gte=0) & Q(posted_micros__lte=F("amount_micros")),
                name="hold_posted_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(state__in=["pending", "posted", "voided", "expired"]),
                name="hold_state_valid",
            ),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"], condition=Q(state="pending"), name="hold_pending_expiry"
            )
        ]

    def __str__(self) -> str:
        return f"hold {self.hold_id} ({self.state})"
