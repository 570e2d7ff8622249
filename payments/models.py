"""Payments' tables: what Tandem asked Stripe to do and what Stripe said happened.

Money never lives here: every amount that moves is a journal entry in the ledger
(ledger.services), keyed by an id derived from the row or the Stripe object, so a
replayed webhook or a re-run job is answered "replayed" by the ledger and moves
nothing twice. These rows hold the state machines around those entries.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from core.models import Organization


class StripeCustomer(models.Model):
    """A buyer organization's Stripe customer and its saved payment method."""

    organization = models.OneToOneField(
        Organization, on_delete=models.PROTECT, related_name="stripe_customer"
    )
    customer_id = models.CharField(max_length=255, unique=True)
    default_payment_method = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.organization_id}:{self.customer_id}"


class PaymentMethodChange(models.Model):
    """A change a buyer asked for to its saved payment methods: make one the default
    (the one auto-recharge and collection charge), or remove one. Recorded before
    Stripe is called; its id makes the Stripe request's idempotency key, and the
    answer is recorded on it after."""

    class Action(models.TextChoices):
        MAKE_DEFAULT = "make_default"
        REMOVE = "remove"

    class Status(models.TextChoices):
        PENDING = "pending"  # recorded; Stripe not yet answered
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="payment_method_changes"
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    payment_method_id = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    failure_message = models.TextField(blank=True, default="")
    requested_by = models.CharField(max_length=254)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status="pending", completed_at__isnull=True)
                | (~Q(status="pending") & Q(completed_at__isnull=False)),
                name="payment_method_change_completed_when_answered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.payment_method_id} ({self.status})"


class TopUp(models.Model):
    """A purchase of prepaid credit. Credit is granted only when Stripe says the
    payment succeeded (``payment_intent.succeeded`` or a completed Checkout
    Session), by the journal entry ``topup:<id>``."""

    class Status(models.TextChoices):
        PENDING = "pending"  # recorded; not yet sent to Stripe
        REQUIRES_PAYMENT = "requires_payment"  # a PaymentIntent waits for the buyer
        PROCESSING = "processing"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"

    class Source(models.TextChoices):
        PAYMENT_ELEMENT = "payment_element"  # client secret for Stripe's Payment Element
        SAVED_METHOD = "saved_method"  # the saved payment method, charged directly
        AUTO_RECHARGE = "auto_recharge"
        CHECKOUT = "checkout"  # Stripe's hosted Checkout page

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    amount_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    source = models.CharField(max_length=20, choices=Source.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # The buyer's Idempotency-Key (API) or the follower's key (auto-recharge).
    request_key = models.CharField(max_length=200)
    payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    checkout_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    checkout_url = models.URLField(max_length=2000, blank=True, default="")
    charge_id = models.CharField(max_length=255, blank=True, default="")
    credited_micros = models.BigIntegerField(default=0)  # what the ledger granted
    failure_message = models.CharField(max_length=500, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)  # calls to Stripe to create it
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "request_key"], name="topup_request_key"
            ),
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="topup_amount_positive"),
            models.CheckConstraint(
                condition=Q(credited_micros__gte=0), name="topup_credited_non_negative"
            ),
        ]
        indexes = [models.Index(fields=["organization", "created_at"], name="topup_org_time")]

    def __str__(self) -> str:
        return f"top-up {self.pk} ({self.status})"

    @property
    def transfer_id(self) -> str:
        return f"topup:{self.pk}"


class Refund(models.Model):
    """Money returned to a buyer's card. Refunds Tandem starts reserve the credit
    first (a ledger hold ``refund:<id>``) and post it when Stripe accepts; refunds
    made in Stripe's dashboard arrive by webhook and are clawed back directly."""

    class Status(models.TextChoices):
        PENDING = "pending"  # reserved; Stripe not yet answered
        SUCCEEDED = "succeeded"  # clawed back in the ledger
        FAILED = "failed"  # Stripe refused: the reservation was released

    class Origin(models.TextChoices):
        TANDEM = "tandem"
        STRIPE = "stripe"

    top_up = models.ForeignKey(TopUp, on_delete=models.PROTECT, related_name="refunds")
    amount_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.TANDEM)
    stripe_refund_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    reason = models.CharField(max_length=500, blank=True, default="")
    requested_by = models.CharField(max_length=100, blank=True, default="")
    # How the claw-back split: from unused credit, and (usage already consumed) owed.
    credit_micros = models.BigIntegerField(default=0)
    receivable_micros = models.BigIntegerField(default=0)
    failure_message = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="refund_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"refund {self.pk} of top-up {self.top_up_id} ({self.status})"

    @property
    def hold_id(self) -> str:
        return f"refund:{self.pk}"


class Dispute(models.Model):
    """A chargeback. Stripe takes the disputed amount when the dispute opens and
    gives it back if it is won; the ledger mirrors both (``dispute:<id>`` and
    ``dispute-won:<id>``)."""

    dispute_id = models.CharField(max_length=255, unique=True)
    top_up = models.ForeignKey(
        TopUp, null=True, blank=True, on_delete=models.PROTECT, related_name="disputes"
    )
    charge_id = models.CharField(max_length=255, blank=True, default="")
    amount_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=40)
    reason = models.CharField(max_length=100, blank=True, default="")
    withdrawn = models.BooleanField(default=False)  # the claw-back is in the ledger
    reinstated = models.BooleanField(default=False)  # won: the claw-back was reversed
    credit_micros = models.BigIntegerField(default=0)
    receivable_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"dispute {self.dispute_id} ({self.status})"


class StripeEvent(models.Model):
    """A webhook delivery whose signature checked out, stored by Stripe's event id
    (unique: a duplicate delivery adds nothing) and processed later by a worker."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=255, blank=True, default="")
    payload = models.JSONField()
    stripe_created = models.DateTimeField()  # the event's own ``created``
    livemode = models.BooleanField(default=False)
    received_at = models.DateTimeField(auto_now_add=True)
    deliveries = models.PositiveIntegerField(default=1)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    outcome = models.CharField(max_length=500, blank=True, default="")
    # Delivered before the payment it is about was applied: it waits for that
    # top-up to be credited, and is sent again when it is.
    waiting_for = models.ForeignKey(
        "TopUp", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["received_at"],
                condition=Q(processed_at__isnull=True),
                name="stripe_event_unprocessed",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"


class AutoRecharge(models.Model):
    """A buyer's standing order: when available credit falls below ``threshold``,
    charge the saved method ``amount``, at most once per crossing (``armed`` goes
    false when it fires and true again once credit is back at the threshold) and
    at most ``daily_cap`` per UTC day."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="auto_recharge"
    )
    enabled = models.BooleanField(default=True)
    currency = models.CharField(max_length=3)
    threshold_micros = models.BigIntegerField()
    amount_micros = models.BigIntegerField()
    daily_cap_micros = models.BigIntegerField()
    armed = models.BooleanField(default=True)
    crossings = models.PositiveIntegerField(default=0)  # how many times it has fired
    # The credit account's balance as of ledger event ``seen_position``, kept by the
    # follower from the events themselves: each event is judged by the balance it
    # left, not by today's (which later events have already moved).
    seen_position = models.BigIntegerField(default=0)
    debits_posted = models.BigIntegerField(default=0)
    credits_posted = models.BigIntegerField(default=0)
    debits_pending = models.BigIntegerField(default=0)
    credits_pending = models.BigIntegerField(default=0)
    last_triggered_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(threshold_micros__gte=0)
                & Q(amount_micros__gt=0)
                & Q(daily_cap_micros__gte=0),
                name="auto_recharge_amounts_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"auto-recharge for {self.organization_id}"


class ConnectedAccount(models.Model):
    """A provider's Stripe Connect Express account; its status comes from
    ``account.updated`` (re-fetched from Stripe, so late deliveries cannot roll it
    back)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.PROTECT, related_name="connected_account"
    )
    account_id = models.CharField(max_length=255, unique=True)
    country = models.CharField(max_length=2)
    details_submitted = models.BooleanField(default=False)
    charges_enabled = models.BooleanField(default=False)
    payouts_enabled = models.BooleanField(default=False)
    requirements_due = models.JSONField(default=list)
    # ``created`` of the newest account event applied: older ones change nothing.
    synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.organization_id}:{self.account_id}"

    @property
    def status(self) -> str:
        if self.payouts_enabled:
            return "active"
        if self.details_submitted:
            return "pending_verification"
        return "onboarding"


class Payout(models.Model):
    """A transfer of a provider's net payable to its connected account. The ledger
    reserves the amount on the payable (hold ``payout:<id>``) when the payout is
    planned, posts it to Stripe clearing when Stripe accepts the transfer, and
    releases it when Stripe refuses. The transfer's idempotency key is derived from
    the payout id, so a run killed anywhere and re-run pays each payout once."""

    class Status(models.TextChoices):
        PENDING = "pending"  # reserved; the transfer may or may not exist at Stripe yet
        PAID = "paid"  # Stripe accepted the transfer; the hold is posted
        FAILED = "failed"  # Stripe refused; the hold is released
        REVERSED = "reversed"  # the transfer was reversed; the payable is restored

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    connected_account = models.ForeignKey(ConnectedAccount, on_delete=models.PROTECT)
    amount_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    transfer_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    # The payable's journal lines this payout covers: entries with positions in
    # (covers_after_position, covers_through_position].
    covers_after_position = models.BigIntegerField(default=0)
    covers_through_position = models.BigIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="payout_amount_positive"),
            # One payout in flight per provider: the next waits for this one's answer.
            models.UniqueConstraint(
                fields=["organization"], condition=Q(status="pending"), name="payout_one_pending"
            ),
        ]

    def __str__(self) -> str:
        return f"payout {self.pk} ({self.status})"

    @property
    def hold_id(self) -> str:
        return f"payout:{self.pk}"

    @property
    def idempotency_key(self) -> str:
        return f"tandem-payout-{self.pk}"


class ReconciliationRun(models.Model):
    """One day's comparison of the ledger's Stripe clearing account with Stripe's
    balance transactions."""

    day = models.DateField()
    currency = models.CharField(max_length=3)
    ledger_micros = models.BigIntegerField(default=0)
    stripe_micros = models.BigIntegerField(default=0)
    matched = models.PositiveIntegerField(default=0)
    ran_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "currency"], name="reconciliation_day"),
        ]

    def __str__(self) -> str:
        return f"reconciliation {self.day} {self.currency}"


class ReconciliationDifference(models.Model):
    class Kind(models.TextChoices):
        MISSING_IN_STRIPE = "missing_in_stripe"
        MISSING_IN_LEDGER = "missing_in_ledger"
        AMOUNT_MISMATCH = "amount_mismatch"

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="differences")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    source_id = models.CharField(max_length=255)  # Stripe's id: ch_, re_, dp_, tr_
    ledger_micros = models.BigIntegerField(default=0)
    stripe_micros = models.BigIntegerField(default=0)
    transfer_ids = models.JSONField(default=list)  # the ledger entries involved
    balance_transactions = models.JSONField(default=list)

    def __str__(self) -> str:
        return f"{self.kind} {self.source_id}"


class InvoiceCollection(models.Model):
    """Collecting one finalized invoice from the buyer's saved payment method, and
    the dunning around it: attempts are ``InvoicePayment`` rows; this row says what
    comes next. A due retry is claimed by a conditional update of this row
    (``status=retry_scheduled`` and ``next_retry_at`` unchanged), so two runners
    never start the same retry."""

    class Status(models.TextChoices):
        COLLECTING = "collecting"  # an attempt is in flight
        RETRY_SCHEDULED = "retry_scheduled"  # the last attempt failed; next at next_retry_at
        PAID = "paid"
        UNCOLLECTIBLE = "uncollectible"  # the last scheduled retry failed: written off
        CLOSED = "closed"  # settled otherwise (voided, credited, paid by other means)

    invoice = models.OneToOneField(
        "invoicing.Invoice", on_delete=models.PROTECT, related_name="collection"
    )
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.COLLECTING)
    attempts = models.PositiveIntegerField(default=0)  # attempts recorded, all triggers
    retries_done = models.PositiveIntegerField(default=0)  # of settings.DUNNING_RETRY_DAYS
    first_failed_at = models.DateTimeField(null=True, blank=True)  # the schedule's origin
    next_retry_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)  # the newest attempt's start
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~Q(status="retry_scheduled") | Q(next_retry_at__isnull=False),
                name="invoice_collection_retry_has_time",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_retry_at"],
                condition=Q(status="retry_scheduled"),
                name="invoice_collection_due",
            )
        ]

    def __str__(self) -> str:
        return f"collection of invoice {self.invoice_id} ({self.status})"


class InvoicePayment(models.Model):
    """One attempt to charge an invoice's amount due to the saved payment method:
    recorded (``pending``) before Stripe is called, with a PaymentIntent whose
    idempotency key is derived from the invoice and the attempt number, so a crash
    anywhere and a re-run charge once. The invoice is marked paid only when Stripe
    says the PaymentIntent succeeded (``payment_intent.succeeded``)."""

    class Status(models.TextChoices):
        PENDING = "pending"  # recorded; Stripe may or may not have it yet
        PROCESSING = "processing"  # Stripe has it; waiting for its answer (the webhook)
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"  # not sent: the invoice no longer needed it

    class Trigger(models.TextChoices):
        FINALIZED = "finalized"  # the first attempt, when the invoice was finalized
        SCHEDULED = "scheduled"  # a dunning retry on settings.DUNNING_RETRY_DAYS
        MANUAL = "manual"  # operator finance asked for a retry now

    collection = models.ForeignKey(
        InvoiceCollection, on_delete=models.PROTECT, related_name="payments"
    )
    invoice = models.ForeignKey("invoicing.Invoice", on_delete=models.PROTECT, related_name="+")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    attempt = models.PositiveIntegerField()  # 1, 2, ... per invoice
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    amount_micros = models.BigIntegerField()  # what the invoice left owed when recorded
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    charge_id = models.CharField(max_length=255, blank=True, default="")
    received_micros = models.BigIntegerField(default=0)
    # Of what was received, what the invoice no longer needed (a credit note or
    # another payment came first): given to the buyer as prepaid credit.
    excess_micros = models.BigIntegerField(default=0)
    failure_code = models.CharField(max_length=100, blank=True, default="")
    failure_message = models.CharField(max_length=500, blank=True, default="")
    requested_by = models.CharField(max_length=200, blank=True, default="")
    request_key = models.CharField(max_length=200, blank=True, default="")  # finance's key
    sends = models.PositiveIntegerField(default=0)  # calls to Stripe to create it
    last_error = models.CharField(max_length=500, blank=True, default="")  # transient
    created_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["invoice", "attempt"], name="invoice_payment_attempt"),
            # One attempt in flight per invoice: two could both be charged.
            models.UniqueConstraint(
                fields=["invoice"],
                condition=Q(status__in=["pending", "processing"]),
                name="invoice_payment_one_in_flight",
            ),
            models.UniqueConstraint(
                fields=["invoice", "request_key"],
                condition=~Q(request_key=""),
                name="invoice_payment_request_key",
            ),
            models.CheckConstraint(
                condition=Q(amount_micros__gt=0), name="invoice_payment_amount_positive"
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="invoice_payment_org_time"),
            models.Index(
                fields=["status", "created_at"],
                condition=Q(status__in=["pending", "processing"]),
                name="invoice_payment_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.attempt} on invoice {self.invoice_id} ({self.status})"

    @property
    def idempotency_key(self) -> str:
        return f"tandem-invoice-{self.invoice_id}-attempt-{self.attempt}"


class InvoiceRefund(models.Model):
    """Money of an invoice payment returned to the buyer's card.

    Refunds finance starts (``tandem``) are corrections: a credit note on the invoice
    (before tax; its tax is given back too) puts its total on the buyer's prepaid
    credit, a ledger hold ``invoice-refund:<id>`` reserves that credit at once, and it
    is posted to Stripe clearing when Stripe accepts the refund (released when Stripe
    refuses: the credit note's credit then stays with the buyer). Refunds made in
    Stripe's dashboard (``stripe``) arrive by webhook with no credit note: they are
    clawed back from unused credit, the rest owed again (receivable), as top-ups are."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Origin(models.TextChoices):
        TANDEM = "tandem"
        STRIPE = "stripe"

    payment = models.ForeignKey(InvoicePayment, on_delete=models.PROTECT, related_name="refunds")
    invoice = models.ForeignKey("invoicing.Invoice", on_delete=models.PROTECT, related_name="+")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    amount_micros = models.BigIntegerField()  # returned to the card, tax included
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.TANDEM)
    credit_note = models.CharField(max_length=40, blank=True, default="")  # its number
    stripe_refund_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    reason = models.CharField(max_length=500, blank=True, default="")
    requested_by = models.CharField(max_length=200, blank=True, default="")
    request_key = models.CharField(max_length=200, blank=True, default="")
    # Stripe-made refunds: how the claw-back split (unused credit, owed again).
    credit_micros = models.BigIntegerField(default=0)
    receivable_micros = models.BigIntegerField(default=0)
    failure_message = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micros__gt=0), name="invoice_refund_amount_positive"
            ),
            models.UniqueConstraint(
                fields=["payment", "request_key"],
                condition=~Q(request_key=""),
                name="invoice_refund_request_key",
            ),
        ]

    def __str__(self) -> str:
        return f"refund {self.pk} of invoice payment {self.payment_id} ({self.status})"

    @property
    def hold_id(self) -> str:
        return f"invoice-refund:{self.pk}"
