"""The ledger's tables.

The journal itself lives in the event store: every journal entry and every hold
change is one event (stream types ``ledger.entry`` and ``ledger.hold``). The
tables here are projections of those events, written in the same transaction:

- ``Posting``: the journal's lines, one per debit or credit, for reading by
  account and period. Append-only (a trigger refuses UPDATE and DELETE) and, on
  PostgreSQL, every statement that adds postings must leave each entry it
  touches summing to zero per currency (a statement-level trigger).
- ``Balance``: posted and pending debits and credits per account
  (TigerBeetle's four counters). Rebuilt identically by replaying the events.
- ``Hold``: two-phase transfers and their state.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from core.models import Organization


class JSONTextField(models.JSONField):
    """A JSONField stored on PostgreSQL as ``json``, not ``jsonb``: the text is checked
    and kept as written rather than parsed into a binary tree. For documents written
    once, read whole and never queried by key (an invoice's, which a month's close
    writes ten thousand of): parsing them into jsonb was the server's largest single
    cost in a close. Elsewhere the same as JSONField."""

    def db_type(self, connection):
        if connection.vendor == "postgresql":
            return "json"
        return super().db_type(connection)

    def from_db_value(self, value, expression, connection):
        # psycopg parses json values itself (Django has it hand back only jsonb as text).
        if value is None or not isinstance(value, str):
            return value
        return super().from_db_value(value, expression, connection)


class BillingProfile(models.Model):
    """Who an organization's invoices are addressed to, and its tax rate."""

    organization = models.OneToOneField(
        Organization, primary_key=True, on_delete=models.PROTECT, related_name="billing_profile"
    )
    legal_name = models.CharField(max_length=200, blank=True, default="")
    address = models.TextField(blank=True, default="")
    tax_id = models.CharField(max_length=64, blank=True, default="")
    tax_rate_bps = models.PositiveIntegerField(default=0)  # 1,900 = 19%
    tax_label = models.CharField(max_length=32, blank=True, default="Tax")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "billing_billingprofile"
        constraints = [
            models.CheckConstraint(
                condition=Q(tax_rate_bps__lte=10_000), name="billing_profile_tax_rate_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"billing profile of {self.organization_id}"


class DocumentSequence(models.Model):
    """The last number handed out in one numbering series of one issuer. Numbers are
    taken by locking this row in the transaction that finalizes the document, so a
    rolled-back finalization gives its number back: no gaps."""

    issuer = models.CharField(max_length=32)
    series = models.CharField(max_length=16)  # "INV" | "CN"
    last_number = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "billing_documentsequence"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "series"], name="document_sequence_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.issuer}-{self.series} @ {self.last_number}"


class Invoice(models.Model):
    class Kind(models.TextChoices):
        MONTHLY = "monthly"
        JOB = "job"  # one closed fine-tune job, invoiced on demand

    class Status(models.TextChoices):
        DRAFT = "draft"
        OPEN = "open"
        PAST_DUE = "past_due"
        PAID = "paid"
        VOID = "void"
        UNCOLLECTIBLE = "uncollectible"

    FINAL = (Status.OPEN, Status.PAST_DUE, Status.PAID, Status.VOID, Status.UNCOLLECTIBLE)

    # monthly:<org>:<YYYY-MM>:<currency> or job:<org>:<job id>:<currency>: the identity
    # replays and retries agree on (row ids may differ between replays).
    key = models.CharField(max_length=240, unique=True)
    # Indexed by (organization, period_start) below; a lone index would be redundant.
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()  # exclusive
    job = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    issuer = models.CharField(max_length=32)
    number = models.CharField(max_length=40, null=True, blank=True)  # noqa: DJ001
    subtotal_exact_micros = models.BigIntegerField(default=0)  # the journal's amounts
    subtotal_micros = models.BigIntegerField(default=0)  # lines rounded to cents
    rounding_micros = models.BigIntegerField(default=0)  # subtotal - exact
    tax_rate_bps = models.PositiveIntegerField(default=0)
    tax_micros = models.BigIntegerField(default=0)
    total_micros = models.BigIntegerField(default=0)
    prepaid_applied_micros = models.BigIntegerField(default=0)
    amount_due_micros = models.BigIntegerField(default=0)
    amount_paid_micros = models.BigIntegerField(default=0)
    credited_micros = models.BigIntegerField(default=0)  # credit notes
    written_off_micros = models.BigIntegerField(default=0)
    generated_at = models.DateTimeField()
    grace_ends_at = models.DateTimeField()
    finalized_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)  # paid, void or uncollectible
    payment_reference = models.CharField(max_length=255, blank=True, default="")
    document = JSONTextField(null=True, blank=True)
    document_sha256 = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        db_table = "billing_invoice"
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "number"],
                condition=Q(number__isnull=False),
                name="invoice_number_unique_per_issuer",
            ),
            models.CheckConstraint(
                condition=Q(status="draft") | Q(number__isnull=False),
                name="invoice_final_has_number",
            ),
            models.CheckConstraint(
                condition=Q(
                    status__in=["draft", "open", "past_due", "paid", "void", "uncollectible"]
                ),
                name="invoice_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "period_start"], name="invoice_org_period"),
            models.Index(fields=["status", "due_at"], name="invoice_status_due"),
        ]

    def __str__(self) -> str:
        return self.number or self.key


class InvoiceLine(models.Model):
    class Product(models.TextChoices):
        FINE_TUNE = "fine_tune"
        INFERENCE = "inference"
        GPU_LEASE = "gpu_lease"
        OTHER = "other"

    # Indexed by the (invoice, ordinal) constraint below; a lone index would be redundant.
    # The reference is checked per statement, not per row (billing 0010: a close
    # writes ~60,000 lines and ~100,000 links, and per-row checks cost it more than
    # writing them).
    invoice = models.ForeignKey(
        Invoice,
        on_delete=models.CASCADE,
        related_name="lines",
        db_index=False,
        db_constraint=False,
    )
    ordinal = models.PositiveIntegerField()
    product = models.CharField(max_length=16, choices=Product.choices)
    description = models.CharField(max_length=300)
    job = models.CharField(max_length=200, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    gpu_model = models.CharField(max_length=100, blank=True, default="")
    region = models.CharField(max_length=64, blank=True, default="")
    quantity = models.BigIntegerField(default=0)
    unit = models.CharField(max_length=32)  # tokens | gpu_seconds | item
    unit_price_micros = models.BigIntegerField(default=0)  # per price_unit of quantity
    price_unit = models.BigIntegerField(default=1)  # 1,000,000 tokens; 3,600 GPU-seconds
    exact_micros = models.BigIntegerField()
    amount_micros = models.BigIntegerField()  # rounded to the minor unit

    class Meta:
        db_table = "billing_invoiceline"
        constraints = [
            models.UniqueConstraint(fields=["invoice", "ordinal"], name="invoice_line_ordinal"),
        ]

    def __str__(self) -> str:
        return f"{self.invoice_id}#{self.ordinal} {self.description}"


class InvoiceLineEntry(models.Model):
    """How much of one journal entry's charge to the buyer a line carries."""

    # Checked per statement, as InvoiceLine.invoice is.
    line = models.ForeignKey(
        InvoiceLine, on_delete=models.CASCADE, related_name="entries", db_constraint=False
    )
    entry_position = models.BigIntegerField()  # the journal entry's event position
    transfer_id = models.CharField(max_length=220)
    amount_micros = models.BigIntegerField()

    class Meta:
        db_table = "billing_invoicelineentry"
        indexes = [models.Index(fields=["entry_position"], name="invoice_line_entry_pos")]

    def __str__(self) -> str:
        return f"line {self.line_id} <- #{self.entry_position} {self.amount_micros}"


class CreditNote(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    key = models.CharField(max_length=240, unique=True)
    issuer = models.CharField(max_length=32)
    number = models.CharField(max_length=40)
    currency = models.CharField(max_length=3)
    amount_micros = models.BigIntegerField()  # before tax
    tax_micros = models.BigIntegerField()
    total_micros = models.BigIntegerField()
    to_receivable_micros = models.BigIntegerField()  # what the buyer no longer owes
    to_credit_micros = models.BigIntegerField()  # given back as prepaid credit
    reason = models.CharField(max_length=500)
    entry_position = models.BigIntegerField()
    issued_at = models.DateTimeField()
    issued_by = models.CharField(max_length=200)

    class Meta:
        db_table = "billing_creditnote"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "number"], name="credit_note_number_unique"),
            models.CheckConstraint(condition=Q(total_micros__gt=0), name="credit_note_positive"),
        ]

    def __str__(self) -> str:
        return self.number


class UsageAccrual(models.Model):
    """Rated usage, summed per journal entry and invoice line: the projection the
    ``billing.accrual`` follower keeps from metering's UsageRecorded events, so a
    period closes by reading these rows instead of re-rating every usage event.

    ``transfer_id`` is the rating entry that charged the usage (``usage:<id>``);
    empty when rating did not charge it (a lease billed by settling its hold)."""

    buyer = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    period = models.DateField()
    currency = models.CharField(max_length=3)
    transfer_id = models.CharField(max_length=220, blank=True, default="")
    product = models.CharField(max_length=16)
    usage_type = models.CharField(max_length=64)
    subject = models.CharField(max_length=200, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    training_type = models.CharField(max_length=32, blank=True, default="")
    gpu_model = models.CharField(max_length=100, blank=True, default="")
    region = models.CharField(max_length=64, blank=True, default="")
    node = models.CharField(max_length=200, blank=True, default="")
    provider_id = models.BigIntegerField(null=True, blank=True)
    rate_micros = models.BigIntegerField()
    rate_unit = models.BigIntegerField()
    fee_bps = models.IntegerField(default=0)
    events = models.IntegerField()
    quantity = models.BigIntegerField()
    amount_micros = models.BigIntegerField()
    provider_micros = models.BigIntegerField(default=0)
    fee_micros = models.BigIntegerField(default=0)
    first_usage_id = models.BigIntegerField()
    batch_position = models.BigIntegerField()  # the UsageRecorded event

    class Meta:
        db_table = "billing_usageaccrual"
        indexes = [
            models.Index(fields=["period", "buyer"], name="usage_accrual_period_buyer"),
            models.Index(fields=["transfer_id"], name="usage_accrual_transfer"),
        ]

    def __str__(self) -> str:
        return f"{self.buyer_id} {self.period} {self.product} {self.amount_micros}"


class ProviderStatement(models.Model):
    """A provider's month: GPU time delivered, earnings, fees, payouts (frozen at close)."""

    key = models.CharField(max_length=240, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    gpu_seconds = models.BigIntegerField(default=0)
    gross_micros = models.BigIntegerField(default=0)
    fee_micros = models.BigIntegerField(default=0)
    net_payable_micros = models.BigIntegerField(default=0)
    payouts_micros = models.BigIntegerField(default=0)
    closing_balance_micros = models.BigIntegerField(default=0)
    document = models.JSONField()
    generated_at = models.DateTimeField()

    class Meta:
        db_table = "billing_providerstatement"

    def __str__(self) -> str:
        return self.key
