"""Payments' event types, appended to the core event store (stream type
``payments``) in the same transaction as the state they announce. Notifications
(receipts, payout statements, dunning emails) follow these, never the tables."""

from __future__ import annotations

from dataclasses import dataclass

from core.eventstore import DomainEvent

PAYMENTS_STREAM = "payments"

TOP_UP_CREDITED = "TopUpCredited"
REFUND_ISSUED = "RefundIssued"
DISPUTE_CHANGED = "DisputeChanged"
PAYOUT_PAID = "PayoutPaid"
PAYOUT_FAILED = "PayoutFailed"
AUTO_RECHARGE_TRIGGERED = "AutoRechargeTriggered"
AUTO_RECHARGE_SKIPPED = "AutoRechargeSkipped"
INVOICE_COLLECTION_SKIPPED = "InvoiceCollectionSkipped"
INVOICE_PAYMENT_ATTEMPTED = "InvoicePaymentAttempted"
INVOICE_PAYMENT_SUCCEEDED = "InvoicePaymentSucceeded"
INVOICE_PAYMENT_FAILED = "InvoicePaymentFailed"
INVOICE_PAYMENT_REFUNDED = "InvoicePaymentRefunded"
# The dunning email's source: one per failed attempt, with when the next one runs
# (none on the final notice, when the invoice is written off).
INVOICE_PAYMENT_REMINDER_SENT = "InvoicePaymentReminderSent"


def top_up_stream(top_up_id: int) -> str:
    return f"top-up:{top_up_id}"


def payout_stream(payout_id: int) -> str:
    return f"payout:{payout_id}"


def dispute_stream(dispute_id: str) -> str:
    return f"dispute:{dispute_id}"


def recharge_stream(organization_id: int) -> str:
    return f"auto-recharge:{organization_id}"


def invoice_collection_stream(invoice_id: int) -> str:
    return f"invoice-collection:{invoice_id}"


@dataclass(frozen=True, slots=True)
class TopUpCredited(DomainEvent):
    schema_version = 1
    organization: int
    top_up: int
    amount_micros: int
    currency: str
    payment_intent: str


@dataclass(frozen=True, slots=True)
class RefundIssued(DomainEvent):
    schema_version = 1
    organization: int
    top_up: int
    refund: int
    amount_micros: int
    currency: str
    credit_micros: int
    receivable_micros: int
    stripe_refund: str


@dataclass(frozen=True, slots=True)
class DisputeChanged(DomainEvent):
    schema_version = 1
    organization: int | None
    dispute: str
    status: str
    amount_micros: int
    currency: str
    credit_micros: int
    receivable_micros: int


@dataclass(frozen=True, slots=True)
class PayoutPaid(DomainEvent):
    schema_version = 1
    organization: int
    payout: int
    amount_micros: int
    currency: str
    transfer: str


@dataclass(frozen=True, slots=True)
class PayoutFailed(DomainEvent):
    schema_version = 1
    organization: int
    payout: int
    amount_micros: int
    currency: str
    reason: str


@dataclass(frozen=True, slots=True)
class AutoRechargeTriggered(DomainEvent):
    schema_version = 1
    organization: int
    top_up: int
    amount_micros: int
    available_micros: int
    threshold_micros: int


@dataclass(frozen=True, slots=True)
class AutoRechargeSkipped(DomainEvent):
    schema_version = 1
    organization: int
    reason: str
    available_micros: int
    threshold_micros: int


@dataclass(frozen=True, slots=True)
class InvoiceCollectionSkipped(DomainEvent):
    schema_version = 1
    organization: int
    invoice: int
    number: str
    amount_due_micros: int
    currency: str
    reason: str


@dataclass(frozen=True, slots=True)
class InvoicePaymentAttempted(DomainEvent):
    schema_version = 1
    organization: int
    invoice: int
    number: str
    payment: int
    attempt: int
    trigger: str
    amount_micros: int
    currency: str


@dataclass(frozen=True, slots=True)
class InvoicePaymentSucceeded(DomainEvent):
    schema_version = 1
    organization: int
    invoice: int
    number: str
    payment: int
    attempt: int
    amount_micros: int
    excess_micros: int
    currency: str
    payment_intent: str


@dataclass(frozen=True, slots=True)
class InvoicePaymentFailed(DomainEvent):
    schema_version = 1
    organization: int
    invoice: int
    number: str
    payment: int
    attempt: int
    failure_code: str
    failure_message: str
    payment_intent: str


@dataclass(frozen=True, slots=True)
class InvoicePaymentReminderSent(DomainEvent):
    schema_version = 1
    organization: int
    invoice: int
    number: str
    attempt: int
    amount_due_micros: int
    currency: str
    failure_message: str
    next_retry_at: str | None  # ISO 8601 UTC; None on the final notice
    final: bool


@dataclass(frozen=True, slots=True)
class InvoicePaymentRefunded(DomainEvent):
    schema_version = 1
    organization: int
    invoice: int
    number: str
    payment: int
    refund: int
    amount_micros: int
    currency: str
    origin: str
    credit_note: str  # its number; empty for a refund made in Stripe's dashboard
    credit_micros: int
    receivable_micros: int
    stripe_refund: str
