"""Finalizing one invoice (``invoice_finalize``): recompute it as of now, number it
from the gap-free sequence, settle it by the one rule (settlement.py) and post that
entry, write its lines and its document, append ``InvoiceFinalized``. The month
close finalizes many at once (month_close.py) through the same rule."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models.base import ModelState
from django.utils import timezone

from core.db import (
    RetryTransaction,
    is_postgres,
    retry_transaction,
    server_cursor,
)
from core.errors import Conflict
from core.eventstore import (
    event_append,
)
from core.followers import followers_run_until_idle
from invoicing.accruals import usage_accruals
from invoicing.calculations import invoice_compute
from invoicing.charges import BUYER_KINDS
from invoicing.documents import _document, _profile, canonical
from invoicing.events import INVOICE_STREAM, InvoiceEvent, InvoiceFinalized
from invoicing.lines import Computed
from invoicing.models import (
    Invoice,
)
from invoicing.numbering import _next_number
from invoicing.periods import due_after
from invoicing.queries import _any, _select
from invoicing.settlement import Totals, settle, settlement_legs
from invoicing.writers import _write_lines
from ledger.models import Account, Balance
from ledger.selectors import account_for_org
from ledger.services import EntryRequest, account_open, ledger_execute, platform_account, raise_for
from metering.services import usage_period_close
from pricing.services import usage_rating


def _append(invoice: Invoice, event: InvoiceEvent, actor: str) -> int:
    stream_id = event.stream_id()
    recorded = event_append(
        stream_type=INVOICE_STREAM,
        stream_id=stream_id,
        expected_version=None,
        events=[event.to_new_event()],
        tenant_id=invoice.organization_id,
        metadata={"actor": actor},
    )
    return recorded[0].position


def _entry_request(
    transfer_id: str, currency: str, signed: dict[int, int], kind: str, description: str
) -> EntryRequest | None:
    """An entry from signed amounts per account (debit positive); None if all zero."""
    legs = tuple(
        (account, "D" if amount > 0 else "C", abs(amount))
        for account, amount in sorted(signed.items())
        if amount
    )
    if not legs:
        return None
    return EntryRequest(
        transfer_id=transfer_id, currency=currency, legs=legs, kind=kind, description=description
    )


def _post(
    transfer_id: str, currency: str, signed: dict[int, int], kind: str, description: str, actor: str
) -> int | None:
    """Post an entry from signed amounts per account (debit positive); None if all zero."""
    entry = _entry_request(transfer_id, currency, signed, kind, description)
    if entry is None:
        return None
    return raise_for(ledger_execute([entry], actor=actor)[0]).position


def _catch_up() -> None:
    """Rate and accrue every usage batch committed so far."""

    followers_run_until_idle([usage_rating, usage_accruals])


def invoice_finalize(
    *,
    invoice: Invoice,
    actor: str = "system",
    now: datetime | None = None,
    close_usage: bool = True,
) -> Invoice:
    """Freeze a draft: close the org's usage month (later usage counts in the next
    one), rate and accrue what arrived before, then in one transaction recompute it a
    last time, take the next number, post rounding, tax and prepaid credit, and record
    the event. ``close_usage=False``: the caller closed the month and caught up."""
    if close_usage and invoice.kind == Invoice.Kind.MONTHLY:
        usage_period_close(organization=invoice.organization, period=invoice.period_start.date())
        _catch_up()
    return _finalize(invoice=invoice, actor=actor, now=now or timezone.now())


@retry_transaction
def _finalize(*, invoice: Invoice, actor: str, now: datetime) -> Invoice:
    locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if locked.status != Invoice.Status.DRAFT:
        return locked
    organization = locked.organization
    period = locked.period_start.date()
    computed = invoice_compute(
        organization=organization,
        currency=locked.currency,
        period=period if locked.kind == Invoice.Kind.MONTHLY else None,
        job=locked.job if locked.kind == Invoice.Kind.JOB else None,
    )
    if not computed.lines:
        raise Conflict(f"invoice {locked.key} has nothing to bill", details={"invoice": locked.key})
    buyer = _profile(organization)
    number = _next_number("INV")
    currency = locked.currency
    credit = account_for_org(organization=organization, kind=Account.Kind.CREDIT, currency=currency)
    available = (
        Balance.objects.select_for_update().get(account=credit).credit_side_available
        if credit is not None
        else 0
    )
    settlement = settle(
        computed,
        currency=currency,
        tax_rate_bps=buyer["tax_rate_bps"],
        available_credit_micros=available,
    )
    totals, apply, prepaid = settlement.totals, settlement.applied_micros, settlement.prepaid_micros
    receivable = (
        account_open(organization=organization, kind=Account.Kind.RECEIVABLE, currency=currency)
        if settlement.needs_receivable
        else None
    )
    legs = settlement_legs(
        settlement,
        receivable=receivable.pk if receivable is not None else None,
        credit=credit.pk if credit is not None else None,
        rounding=platform_account(kind=Account.Kind.ROUNDING, currency=currency).pk,
        tax_payable=platform_account(kind=Account.Kind.TAX_PAYABLE, currency=currency).pk,
    )
    _post(
        f"invoice:{locked.key}",
        currency,
        legs,
        "invoice",
        f"invoice {number}: rounding to cents, tax, prepaid credit applied",
        actor,
    )
    finalized_at = now.isoformat()
    due_at = (now + due_after()).isoformat()
    document = _document(
        invoice=locked,
        computed=computed,
        totals=totals,
        buyer=buyer,
        number=number,
        finalized_at=finalized_at,
        due_at=due_at,
        prepaid_applied=prepaid,
    )
    digest = hashlib.sha256(canonical(document)).hexdigest()
    _set_final(
        locked,
        number=number,
        finalized_at=now,
        due_at=now + due_after(),
        totals=totals,
        prepaid=prepaid,
        document=document,
        digest=digest,
    )
    locked.save()
    _write_lines(locked, computed)
    _append(
        locked,
        InvoiceFinalized(
            key=locked.key,
            number=number,
            organization=organization.pk,
            kind=locked.kind,
            currency=currency,
            period_start=locked.period_start.isoformat(),
            period_end=locked.period_end.isoformat(),
            job=locked.job,
            issuer=locked.issuer,
            finalized_at=finalized_at,
            due_at=due_at,
            as_of_position=computed.as_of_position,
            buyer=buyer,
            prepaid_applied_micros=prepaid,
            credit_applied_at_finalize_micros=apply,
            total_micros=totals.total,
            document_sha256=digest,
        ),
        actor,
    )
    return locked


def _set_final(
    invoice: Invoice,
    *,
    number: str,
    finalized_at: datetime,
    due_at: datetime,
    totals: Totals,
    prepaid: int,
    document: dict | None,
    digest: str,
) -> None:
    """A finalized invoice's number, status, dates, totals, prepaid credit applied
    and document (unsaved): paid at once when prepaid credit covers it."""
    invoice.number = number
    invoice.status = Invoice.Status.PAID if totals.total - prepaid <= 0 else Invoice.Status.OPEN
    invoice.finalized_at = finalized_at
    invoice.due_at = due_at
    if invoice.status == Invoice.Status.PAID:
        invoice.closed_at = finalized_at
        invoice.payment_reference = "prepaid credit"
    invoice.subtotal_exact_micros = totals.exact
    invoice.subtotal_micros = totals.subtotal
    invoice.rounding_micros = totals.rounding
    invoice.tax_rate_bps = totals.tax_rate_bps
    invoice.tax_micros = totals.tax
    invoice.total_micros = totals.total
    invoice.prepaid_applied_micros = prepaid
    invoice.amount_due_micros = totals.total - prepaid
    invoice.document = document
    invoice.document_sha256 = digest


def _finalized_event(
    invoice: Invoice,
    number: str,
    computed: Computed,
    totals: Totals,
    buyer: dict[str, Any],
    prepaid: int,
    apply: int,
    digest: str,
    finalized_at: str,
    due_at: str,
) -> InvoiceFinalized:
    return InvoiceFinalized(
        key=invoice.key,
        number=number,
        organization=invoice.organization_id,
        kind=invoice.kind,
        currency=invoice.currency,
        period_start=invoice.period_start.isoformat(),
        period_end=invoice.period_end.isoformat(),
        job=invoice.job,
        issuer=invoice.issuer,
        finalized_at=finalized_at,
        due_at=due_at,
        as_of_position=computed.as_of_position,
        buyer=buyer,
        prepaid_applied_micros=prepaid,
        credit_applied_at_finalize_micros=apply,
        total_micros=totals.total,
        document_sha256=digest,
    )


def _buyer_accounts(org_ids: list[int], currency: str) -> dict[tuple[int, str], int]:
    """(org, kind) -> account id of each org's credit and receivable that exist."""
    orgs, orgs_params = _any(sorted(org_ids))
    kinds, kinds_params = _any([kind.value for kind in BUYER_KINDS])
    return {
        (org, kind): pk
        for org, kind, pk in _select(
            f"SELECT organization_id, kind, id FROM {Account._meta.db_table} "
            f"WHERE organization_id {orgs} AND currency = %s AND kind {kinds}",
            [*orgs_params, currency, *kinds_params],
        )
    }


def _buyer_accounts_open(
    missing: list[tuple[int, str]], currency: str
) -> dict[tuple[int, str], int]:
    """(org, kind) -> account id of these buyer accounts, which did not exist: opened
    (with a zero balance, as ``account_open`` does)."""
    if not missing:
        return {}
    try:
        with transaction.atomic():
            if is_postgres():
                made = _accounts_insert_pg(missing, currency)
            else:
                accounts = Account.objects.bulk_create(
                    [
                        Account(
                            organization_id=org,
                            kind=kind,
                            currency=currency,
                            normal_side=Account.NORMAL_SIDE[Account.Kind(kind)],
                            overdraft_limit_micros=0 if kind == Account.Kind.CREDIT else None,
                        )
                        for org, kind in missing
                    ]
                )
                made = [(int(a.organization_id or 0), a.kind, a.pk) for a in accounts]
                Balance.objects.bulk_create([Balance(account_id=pk) for _, _, pk in made])
    except IntegrityError as exc:
        # Opened concurrently (account_open): read them again from a fresh transaction.
        raise RetryTransaction("a buyer account was opened concurrently") from exc
    return {(org, kind): pk for org, kind, pk in made}


def _accounts_insert_pg(
    accounts: list[tuple[int, str]], currency: str
) -> list[tuple[int, str, int]]:
    with connection.wrap_database_errors:
        cursor = server_cursor()
        cursor.execute(
            f"""WITH made AS (
                    INSERT INTO {Account._meta.db_table} (organization_id, kind, currency,
                                normal_side, overdraft_limit_micros, created_at)
                    SELECT o, k, %s, s, l, %s
                      FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[])
                           AS t(o, k, s, l)
                    RETURNING id, organization_id, kind),
                balance AS (
                    INSERT INTO {Balance._meta.db_table} (account_id, debits_posted, credits_posted,
                                debits_pending, credits_pending, position)
                    SELECT id, 0, 0, 0, 0, 0 FROM made)
                SELECT organization_id, kind, id FROM made""",
            [
                currency,
                timezone.now(),
                [org for org, _ in accounts],
                [str(kind) for _, kind in accounts],
                [str(Account.NORMAL_SIDE[Account.Kind(kind)]) for _, kind in accounts],
                [0 if kind == Account.Kind.CREDIT else None for _, kind in accounts],
            ],
        )
        return cursor.fetchall()


def _invoice_new(**values: Any) -> Invoice:
    """A new invoice with these attribute values (the others their fields' defaults),
    its attributes set as ``Model.__init__`` would leave them, without it: a close
    makes one invoice per buyer, and the model's constructor (a setattr and a
    descriptor per field, two signals) cost ten times more. No receiver of
    ``pre_init``/``post_init`` is registered for invoices."""
    if not _INVOICE_DEFAULTS:
        _INVOICE_DEFAULTS.update(
            (f.attname, f.get_default()) for f in Invoice._meta.concrete_fields
        )
    if not values.keys() <= _INVOICE_DEFAULTS.keys():
        raise TypeError(f"not invoice fields: {sorted(values.keys() - _INVOICE_DEFAULTS.keys())}")
    invoice = Invoice.__new__(Invoice)
    attributes = invoice.__dict__
    attributes.update(_INVOICE_DEFAULTS)
    attributes.update(values)
    invoice._state = ModelState()
    return invoice


_INVOICE_DEFAULTS: dict[str, Any] = {}
