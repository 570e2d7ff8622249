"""The invoices' event stream (``billing.invoice``, one stream per invoice:
``invoice:<key>``) and its event types: finalized, paid, past due, uncollectible,
voided, and credit notes issued.

Each type is a ``DomainEvent``: its stored ``type`` is its class name (the one
exception, ``InvoiceMarkedUncollectible``, keeps the name it was first stored
under), its fields are the payload, ``key`` first. The stream's name predates the
apps' split and stays: the stored events carry it. Consumers (replay, the payments
follower) compare ``event.type`` with these classes' ``type``; replay reads the
stored payloads as they are, old shapes included."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from core.eventstore import DomainEvent, stream_id

INVOICE_STREAM = "billing.invoice"


class InvoiceEvent(DomainEvent):
    """What the invoice events share: the invoice's ``key`` (the first field of each)
    names the stream, and the payload is the fields in their order, as they were
    stored before these types existed."""

    key: str

    def stream_id(self) -> str:
        return stream_id("invoice", self.key)

    def payload(self) -> dict[str, Any]:
        # Shallow (not dataclasses.asdict), by names read once per type (not
        # dataclasses.fields, which filters the class's fields on every call): the
        # month close builds one per invoice.
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in fields(self))  # type: ignore[arg-type]
        return {name: getattr(self, name) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # each event type's fields, in order


@dataclass(frozen=True, slots=True)
class InvoiceFinalized(InvoiceEvent):
    """What replay needs to rebuild the invoice byte for byte, and its document's
    hash to check it against."""

    key: str
    number: str
    organization: int
    kind: str
    currency: str
    period_start: str  # ISO 8601
    period_end: str
    job: str
    issuer: str
    finalized_at: str
    due_at: str
    as_of_position: int
    buyer: dict[str, Any]
    prepaid_applied_micros: int
    credit_applied_at_finalize_micros: int
    total_micros: int
    document_sha256: str


@dataclass(frozen=True, slots=True)
class InvoicePaid(InvoiceEvent):
    key: str
    payment_reference: str
    amount_micros: int
    at: str


@dataclass(frozen=True, slots=True)
class InvoicePastDue(InvoiceEvent):
    key: str
    at: str


@dataclass(frozen=True, slots=True)
class InvoiceUncollectible(InvoiceEvent):
    type = "InvoiceMarkedUncollectible"  # the name it has been stored under
    key: str
    amount_micros: int
    reason: str
    at: str


@dataclass(frozen=True, slots=True)
class InvoiceVoided(InvoiceEvent):
    key: str
    reason: str
    at: str


@dataclass(frozen=True, slots=True)
class CreditNoteIssued(InvoiceEvent):
    key: str
    credit_note: str
    note_key: str
    amount_micros: int
    tax_micros: int
    to_receivable_micros: int
    to_credit_micros: int
    reason: str
    at: str
