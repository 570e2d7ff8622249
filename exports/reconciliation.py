"""The reconciliation report.

Reconciliation: the ledger against the documents that say what it should hold,
section by section, each difference listed with its cause:

- ``journal``: total debits against total credits (the books balance);
- ``receivables``: the buyers' ``receivable`` accounts against what is still owed
  on finalized invoices. Every posting on a receivable is traced to an invoice
  (its finalization ``invoice:<key>``, payment ``…:paid``, write-off, void, a credit
  note ``cn:<number>``, or a charge one of its lines carries, by the same pro-rata
  split of prepaid credit that invoicing used). Per invoice the ledger and the
  invoice must agree; what no finalized invoice carries yet is listed by cause
  (usage charged but not yet invoiced, a refund or chargeback taken back from
  spent credit, a manual adjustment);
- ``tax`` and ``rounding``: ``tax_payable`` and ``rounding`` against the finalized
  invoices' tax and rounding, less credit notes' tax and void invoices;
- ``payments_received``: Stripe clearing's debits from top-ups and invoice
  payments against the top-ups credited and the amounts paid on invoices;
- ``refunds_and_disputes``: clearing's credits for refunds and chargebacks against
  the refunds that succeeded and the disputes whose funds were withdrawn;
- ``payouts_sent``: clearing's credits for payouts against the payouts Stripe
  accepted; a transfer Stripe reversed is listed as such;
- ``other_clearing``: anything else on Stripe clearing.

A difference whose cause is part of how the books work (timing, a manual
adjustment with its reason on the record) is *explained*; anything else (an
invoice and the ledger disagreeing, a payment recorded on one side only) is
*unexplained*. On a correct system the unexplained total is zero. The report is
read in one REPEATABLE READ snapshot on PostgreSQL, so a write landing between
two of its queries cannot show up as a difference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Max, Q, Sum
from django.utils import timezone

from core.models import Event
from exports.journal import Line, journal
from exports.receivables import invoice_outstanding
from invoicing.models import CreditNote, Invoice, InvoiceLineEntry
from ledger import events as ev
from ledger.models import Account, Posting
from payments.models import Dispute, Payout, Refund, TopUp

TRACED_KINDS = (
    Account.Kind.RECEIVABLE,
    Account.Kind.TAX_PAYABLE,
    Account.Kind.ROUNDING,
    Account.Kind.STRIPE_CLEARING,
)
# Entry kinds whose postings are explained by what they are.
EXPLAINED_KINDS = {
    "usage": "usage charged, not yet on a finalized invoice",
    "minimum": "fine-tune minimum charged, not yet on a finalized invoice",
    "hold": "lease time charged, not yet on a finalized invoice",
    "claw_back": "refund or chargeback taken back from credit already spent: owed outside invoices",
    "claw_back_reversal": "chargeback won: what was taken back is reinstated",
    "adjustment": "manual adjustment by finance (reason on the journal entry)",
}


@dataclass(frozen=True, slots=True)
class Difference:
    section: str
    reference: str  # an invoice number, a top-up, a payout, an organization, …
    cause: str
    explained: bool
    ledger_micros: int
    documents_micros: int

    @property
    def amount_micros(self) -> int:
        return self.ledger_micros - self.documents_micros


@dataclass(slots=True)
class Section:
    name: str
    ledger_micros: int = 0
    documents_micros: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def difference_micros(self) -> int:
        return self.ledger_micros - self.documents_micros

    @property
    def explained_micros(self) -> int:
        return sum(d.amount_micros for d in self.differences if d.explained)

    @property
    def unexplained_micros(self) -> int:
        return self.difference_micros - self.explained_micros

    def add(self, reference: str, cause: str, explained: bool, ledger: int, documents: int) -> None:
        if ledger != documents:
            self.differences.append(
                Difference(self.name, reference, cause, explained, ledger, documents)
            )

    def close(self) -> Section:
        """List what the itemised differences do not account for, so the items
        always add up to the section's difference."""
        rest = self.difference_micros - sum(d.amount_micros for d in self.differences)
        if rest:
            self.differences.append(
                Difference(self.name, "", "not traced to any entry or document", False, rest, 0)
            )
        return self


@dataclass(slots=True)
class Reconciliation:
    currency: str
    position: int  # the newest event the report reflects
    generated_at: Any
    sections: list[Section]

    @property
    def differences(self) -> list[Difference]:
        return [d for s in self.sections for d in s.differences]

    @property
    def unexplained(self) -> list[Difference]:
        return [d for d in self.differences if not d.explained]

    @property
    def unexplained_micros(self) -> int:
        """The size of what is unexplained: amounts of opposite sign do not cancel."""
        return sum(abs(d.amount_micros) for d in self.unexplained)


def _section_by_invoice(
    name: str,
    lines: list[Line],
    signed: Callable[[Line], int],
    expected: Callable[[Invoice], int],
    invoices: dict[str, Invoice],
    note_invoice: dict[str, str],
    account_names: dict[int, str],
    charge_part: Callable[[Line], dict[str, int]] | None = None,
) -> Section:
    """Trace each posting to an invoice (by its reference) and compare per invoice
    what the ledger holds with what the invoice says; list the rest by cause."""
    section = Section(name)
    per_invoice: dict[str, int] = defaultdict(int)
    unlinked: dict[tuple[str, str], int] = defaultdict(int)
    for line in lines:
        amount = signed(line)
        section.ledger_micros += amount
        key = _invoice_of(line.ref, note_invoice)
        if key is not None and key in invoices:
            per_invoice[key] += amount
            continue
        parts = charge_part(line) if charge_part is not None else {}
        for invoice_key, part in parts.items():
            per_invoice[invoice_key] += part
            amount -= part
        if parts and amount == 0:
            continue
        if parts:
            cause = "prepaid credit split pro rata across invoices: rounding to the micro-unit"
            unlinked[(cause, "")] += amount
            continue
        unlinked[(line.kind, account_names.get(line.account_id, str(line.account_id)))] += amount
    for invoice in invoices.values():
        owed = expected(invoice)
        section.documents_micros += owed
        section.add(
            invoice.number or invoice.key,
            "the invoice and the ledger disagree",
            False,
            per_invoice.get(invoice.key, 0),
            owed,
        )
    for (kind, account), amount in sorted(unlinked.items()):
        if kind in EXPLAINED_KINDS or kind.startswith("prepaid credit"):
            cause = EXPLAINED_KINDS.get(kind, kind)
            section.add(account, cause, True, amount, 0)
        else:
            cause = f"{kind} entry on this account that no document accounts for"
            section.add(account, cause, False, amount, 0)
    return section.close()


def _invoice_of(ref: str, note_invoice: dict[str, str]) -> str | None:
    if ref.startswith("invoice:"):
        key = ref.removeprefix("invoice:")
        for suffix in (":paid", ":written-off", ":void"):
            key = key.removesuffix(suffix)
        return key
    if ref.startswith("cn:"):
        return note_invoice.get(ref.removeprefix("cn:"))
    return None


def _entry_legs(refs: set[str]) -> dict[str, list[list[Any]]]:
    """transfer id (or ``hold:<id>``) → the legs its journal entry posted."""
    stream_ids = [
        ev.hold_stream_id(r.removeprefix("hold:"))
        if r.startswith("hold:")
        else ev.entry_stream_id(r)
        for r in refs
    ]
    found: dict[str, list[list[Any]]] = {}
    for payload in Event.objects.filter(
        stream_id__in=stream_ids, type__in=(ev.ENTRY_POSTED, ev.HOLD_POSTED)
    ).values_list("payload", flat=True):
        ref = payload.get("transfer_id") or f"hold:{payload['hold_id']}"
        found[ref] = payload["legs"]
    return found


def _receivable_parts(
    lines: list[Line], invoices: dict[str, Invoice], currency: str
) -> Callable[[Line], dict[str, int]]:
    """For a charge carried by finalized invoices' lines: the share of its posting on
    the receivable that each invoice carries (what it charged less the prepaid
    credit that paid it, split pro rata as invoicing does)."""
    refs = {line.ref for line in lines}
    carried: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ref, key, amount in InvoiceLineEntry.objects.filter(
        transfer_id__in=refs, line__invoice__key__in=invoices
    ).values_list("transfer_id", "line__invoice__key", "amount_micros"):
        carried[ref][key] += amount
    legs = _entry_legs(set(carried))
    kinds: dict[int, str] = {}
    owner_of: dict[int, int] = {}
    for pk, kind, owner in Account.objects.filter(
        organization__isnull=False,
        kind__in=(Account.Kind.CREDIT, Account.Kind.RECEIVABLE),
        currency=currency,
    ).values_list("pk", "kind", "organization_id"):
        kinds[pk], owner_of[pk] = kind, owner

    def parts(line: Line) -> dict[str, int]:
        shares = carried.get(line.ref)
        if not shares:
            return {}
        entry = legs.get(line.ref, [])
        # The buyer owns this receivable: its credit and receivable legs.
        owner = owner_of[line.account_id]
        mine = {a for a, _, _ in entry if owner_of.get(a) == owner}
        debit = sum(x for a, s, x in entry if s == "D" and a in mine)
        credit = sum(x for a, s, x in entry if s == "D" and a in mine and kinds.get(a) == "credit")
        credit = min(credit, debit)
        out = {}
        for key, amount in shares.items():
            prepaid = credit if amount >= debit else credit * amount // max(debit, 1)
            out[key] = amount - prepaid
        return out

    return parts


def _signed(side: str) -> Callable[[Line], int]:
    if side == "D":
        return lambda line: -line.signed_credit
    return lambda line: line.signed_credit


def reconciliation_compute(*, currency: str | None = None) -> Reconciliation:
    """Reconcile the ledger with invoices, payments and payouts, now."""
    currency = currency or settings.TANDEM_CURRENCY
    # Inside a caller's transaction its isolation stands (it may have read already).
    opens_transaction = not connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and opens_transaction:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return _compute(currency)


RECONCILIATION_CACHE_SECONDS = 300


def reconciliation_report(*, currency: str | None = None, fresh: bool = False) -> Reconciliation:
    """The reconciliation as the finance page shows it: computed once per position of
    the event store (every posting, invoice and credit note is an event; one index
    read tells whether the books moved) and kept at most
    ``RECONCILIATION_CACHE_SECONDS``, so what moves without an event (a payment row
    between its write and its posting) is read again within minutes. ``fresh``:
    computed now, whatever is kept. The report says the position and time it is of."""
    currency = currency or settings.TANDEM_CURRENCY
    position = Event.objects.aggregate(p=Max("position"))["p"] or 0
    key = f"exports:reconciliation:{currency}:{position}"
    report = None if fresh else cache.get(key)
    if report is None:
        report = reconciliation_compute(currency=currency)
        cache.set(key, report, timeout=RECONCILIATION_CACHE_SECONDS)
    return report


def _compute(currency: str) -> Reconciliation:
    position = Event.objects.aggregate(p=Max("position"))["p"] or 0
    sections = []

    journal_section = Section("journal")
    totals = dict(
        Posting.objects.filter(currency=currency)
        .values_list("side")
        .annotate(total=Sum("amount_micros"))
        .values_list("side", "total")
    )
    journal_section.ledger_micros = int(totals.get("D") or 0)
    journal_section.documents_micros = int(totals.get("C") or 0)
    journal_section.add(
        "",
        "total debits and total credits differ",
        False,
        journal_section.ledger_micros,
        journal_section.documents_micros,
    )
    sections.append(journal_section.close())

    by_kind: dict[str, list[Line]] = defaultdict(list)
    kinds: dict[int, str] = {}
    account_names: dict[int, str] = {}
    for pk, kind, owner in Account.objects.filter(currency=currency).values_list(
        "pk", "kind", "organization__name"
    ):
        kinds[pk] = kind
        account_names[pk] = f"{owner or 'platform'} {kind} (account {pk})"
    # The accounts documents speak for; revenue, payables and credit are the exports'.
    for line in journal(Q(currency=currency, kind__in=TRACED_KINDS)):
        by_kind[kinds[line.account_id]].append(line)

    invoices = {
        i.key: i
        for i in Invoice.objects.filter(currency=currency)
        .exclude(status=Invoice.Status.DRAFT)
        .prefetch_related("credit_notes")
        .order_by("issuer", "number")
    }
    notes = list(CreditNote.objects.filter(invoice__key__in=invoices).select_related("invoice"))
    note_invoice = {n.number: n.invoice.key for n in notes}
    note_tax: dict[str, int] = defaultdict(int)
    for note in notes:
        note_tax[note.invoice.key] += note.tax_micros

    receivables = by_kind[Account.Kind.RECEIVABLE]
    sections.append(
        _section_by_invoice(
            "receivables",
            receivables,
            _signed("D"),
            invoice_outstanding,
            invoices,
            note_invoice,
            account_names,
            _receivable_parts(receivables, invoices, currency),
        )
    )
    sections.append(
        _section_by_invoice(
            "tax",
            by_kind[Account.Kind.TAX_PAYABLE],
            _signed("C"),
            lambda i: (0 if i.status == Invoice.Status.VOID else i.tax_micros) - note_tax[i.key],
            invoices,
            note_invoice,
            account_names,
        )
    )
    sections.append(
        _section_by_invoice(
            "rounding",
            by_kind[Account.Kind.ROUNDING],
            _signed("C"),
            lambda i: 0 if i.status == Invoice.Status.VOID else i.rounding_micros,
            invoices,
            note_invoice,
            account_names,
        )
    )
    sections += _clearing_sections(by_kind[Account.Kind.STRIPE_CLEARING], invoices, currency)
    return Reconciliation(currency, position, timezone.now(), sections)


def _clearing_sections(
    lines: list[Line], invoices: dict[str, Invoice], currency: str
) -> list[Section]:
    received, returned, paid_out, other = (
        Section("payments_received"),
        Section("refunds_and_disputes"),
        Section("payouts_sent"),
        Section("other_clearing"),
    )
    ledger: dict[tuple[str, str], int] = defaultdict(int)
    refund_by_stripe = dict(
        Refund.objects.filter(currency=currency)
        .exclude(stripe_refund_id=None)
        .values_list("stripe_refund_id", "pk")
    )
    leftovers: dict[tuple[str, str], int] = defaultdict(int)
    for line in lines:
        ref, into = line.ref, -line.signed_credit  # money into clearing: a debit
        if ref.startswith("topup:"):
            ledger[("top-up", ref.removeprefix("topup:"))] += into
        elif ref.startswith("invoice:") and ref.endswith(":paid"):
            ledger[("invoice", ref.removeprefix("invoice:").removesuffix(":paid"))] += into
        elif ref.startswith("hold:refund:"):
            ledger[("refund", ref.removeprefix("hold:refund:"))] -= into
        elif ref.startswith("refund:"):
            stripe_id = ref.removeprefix("refund:")
            ledger[("refund", str(refund_by_stripe.get(stripe_id, stripe_id)))] -= into
        elif ref.startswith(("dispute:", "dispute-won:")):
            ledger[("dispute", ref.split(":", 1)[1])] -= into
        elif ref.startswith("hold:payout:"):
            ledger[("payout", ref.removeprefix("hold:payout:"))] -= into
        elif ref.startswith("payout-reversal:"):
            ledger[("payout reversal", ref.removeprefix("payout-reversal:"))] -= into
        else:
            leftovers[(line.kind, ref)] += into

    documents: dict[tuple[str, str], int] = defaultdict(int)
    for pk, amount in TopUp.objects.filter(
        currency=currency, status=TopUp.Status.SUCCEEDED
    ).values_list("pk", "credited_micros"):
        documents[("top-up", str(pk))] += amount
    for invoice in invoices.values():
        if invoice.amount_paid_micros:
            documents[("invoice", invoice.key)] += invoice.amount_paid_micros
    for pk, amount in Refund.objects.filter(
        currency=currency, status=Refund.Status.SUCCEEDED
    ).values_list("pk", "amount_micros"):
        documents[("refund", str(pk))] += amount
    for dispute in Dispute.objects.filter(currency=currency, withdrawn=True):
        documents[("dispute", dispute.dispute_id)] += dispute.amount_micros * (
            0 if dispute.reinstated else 1
        )
    for pk, amount in Payout.objects.filter(
        currency=currency, status__in=(Payout.Status.PAID, Payout.Status.REVERSED)
    ).values_list("pk", "amount_micros"):
        documents[("payout", str(pk))] += amount

    section_of = {
        "top-up": received,
        "invoice": received,
        "refund": returned,
        "dispute": returned,
        "payout": paid_out,
        "payout reversal": paid_out,
    }
    for what, ref in sorted(set(ledger) | set(documents)):
        section = section_of[what]
        in_ledger, in_documents = ledger.get((what, ref), 0), documents.get((what, ref), 0)
        section.ledger_micros += in_ledger
        section.documents_micros += in_documents
        if what == "payout reversal":
            section.add(
                f"reversal {ref}",
                "transfer reversed by Stripe: the payout's amount is back on the payable",
                True,
                in_ledger,
                in_documents,
            )
            continue
        reference = (
            f"{what} {invoices[ref].number if what == 'invoice' and ref in invoices else ref}"
        )
        if in_documents == 0:
            cause = f"the ledger moved money for this {what}; its record says nothing was"
        elif in_ledger == 0:
            cause = f"the {what} is recorded as done; the ledger has no entry for it"
        else:
            cause = f"the ledger and the {what}'s record disagree on the amount"
        section.add(reference, cause, False, in_ledger, in_documents)
    for (kind, ref), amount in sorted(leftovers.items()):
        other.ledger_micros += amount
        explained = kind == "adjustment"
        other.add(
            ref,
            EXPLAINED_KINDS[kind] if explained else f"{kind} entry on Stripe clearing",
            explained,
            amount,
            0,
        )
    return [s.close() for s in (received, returned, paid_out, other)]
