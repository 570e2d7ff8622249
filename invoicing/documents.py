"""An invoice's document in its three renderings: JSON (canonical bytes), HTML (a
Django template) and PDF (reportlab, in invariant mode so the same document always
gives the same bytes). All three are made from ``Invoice.document`` — frozen at
finalization — so they cannot disagree with each other or with the ledger."""

from __future__ import annotations

import dataclasses
import io
from typing import Any
from xml.sax.saxutils import escape

from django.template.loader import render_to_string

from core.eventstore import (
    CANONICAL_JSON,
    json_text,
)
from core.models import Organization
from invoicing.amounts import _money_of, _MoneyTexts, cents
from invoicing.lines import Computed
from invoicing.models import (
    BillingProfile,
    Invoice,
)
from invoicing.queries import _any, _select
from invoicing.settlement import Totals


def invoice_json(invoice: Invoice) -> bytes:
    return canonical(invoice.document or {})


def _tax_rate(doc: dict[str, Any]) -> str:
    bps = int(doc["totals"]["tax_rate_bps"])
    return f"{bps // 100}.{bps % 100:02d}%"


def invoice_html(invoice: Invoice) -> bytes:
    doc = invoice.document or {}
    return render_to_string(
        "invoicing/invoice.html", {"doc": doc, "tax_rate": _tax_rate(doc)}
    ).encode()


def _bill_to(buyer: dict[str, Any]) -> str:
    """Who the invoice is addressed to, as reportlab's paragraph markup: the legal
    name, the tax id with its label, the address line by line. The buyer typed them,
    so they are escaped (a "&" or "<" in a company name is text, not markup)."""
    text = f"Bill to: {escape(str(buyer.get('legal_name', '')))}"
    if buyer.get("tax_id"):
        text += f" · {escape(str(buyer.get('tax_label') or 'Tax'))} id {escape(buyer['tax_id'])}"
    lines = [escape(line) for line in str(buyer.get("address", "")).splitlines() if line.strip()]
    return "<br/>".join([text, *lines])


def invoice_pdf(invoice: Invoice) -> bytes:
    from reportlab import rl_config

    rl_config.invariant = 1  # no timestamps or random ids: same document, same bytes
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    doc = invoice.document or {}
    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    title = f"Invoice {doc.get('number') or 'DRAFT'}"
    pdf = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        title=title,
        author=str(doc.get("issuer", "")),
        leftMargin=18 * mm,
        rightMargin=18 * mm,
    )
    story: list[Any] = [Paragraph(title, styles["Title"])]
    period = doc.get("period", {})
    scope = (
        f"fine-tune job {doc.get('job')}"
        if doc.get("kind") == "job"
        else f"period {period.get('start', '')[:10]} to {period.get('end', '')[:10]} (exclusive)"
    )
    buyer = doc.get("buyer", {})
    story.append(
        Paragraph(f"Issuer {doc.get('issuer')} · {doc.get('currency')} · {scope}", styles["Normal"])
    )
    story.append(Paragraph(_bill_to(buyer), styles["Normal"]))
    if doc.get("finalized_at"):
        story.append(
            Paragraph(f"Finalized {doc['finalized_at']} · due {doc['due_at']}", styles["Normal"])
        )
    story.append(Spacer(1, 6 * mm))
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    rows: list[list[Any]] = [["#", "Description", "Quantity", "Unit price", "Amount"]]
    for line in doc.get("lines", []):
        rows.append(
            [
                str(line["ordinal"]),
                Paragraph(line["description"], small),
                f"{line['quantity']} {line['unit']}",
                line["unit_price"]["text"],
                line["amount"]["text"],
            ]
        )
    totals = doc.get("totals", {})
    currency = doc.get("currency", "")
    for label, key in (
        ("Subtotal", "subtotal"),
        (f"{buyer.get('tax_label', 'Tax')} ({_tax_rate(doc)})" if totals else "Tax", "tax"),
        ("Total", "total"),
        ("Prepaid credit applied", "prepaid_applied"),
        ("Amount due", "amount_due"),
    ):
        if key in totals:
            rows.append(["", "", "", label, f"{totals[key]['text']} {currency}"])
    table = Table(rows, colWidths=[10 * mm, 80 * mm, 30 * mm, 28 * mm, 28 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTSIZE", (0, 0), (-1, -1), 8),
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                ("ALIGN", (2, 0), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    story.append(table)
    pdf.build(story)
    return buffer.getvalue()


def canonical(document: dict[str, Any]) -> bytes:
    """The document as canonical JSON: json.dumps's sorted, compact, unescaped text
    (tests/invoicing/test_invoice_documents.py holds the two equal)."""
    return CANONICAL_JSON.encode(document)


def _profile(organization: Organization) -> dict[str, Any]:
    return _profiles([organization])[organization.pk]


def _profiles(organizations: list[Organization]) -> dict[int, dict[str, Any]]:
    orgs, orgs_params = _any(sorted(o.pk for o in organizations))
    found: dict[int, tuple] = {
        row[0]: row[1:]
        for row in _select(
            "SELECT organization_id, legal_name, address, tax_id, tax_rate_bps, tax_label "
            f"FROM {BillingProfile._meta.db_table} WHERE organization_id {orgs}",
            orgs_params,
        )
    }
    buyers = {}
    for organization in organizations:
        legal_name, address, tax_id, tax_rate_bps, tax_label = found.get(
            organization.pk, ("", "", "", 0, "")
        )
        buyers[organization.pk] = {
            "name": organization.name,
            "legal_name": legal_name or organization.name,
            "address": address,
            "tax_id": tax_id,
            "tax_rate_bps": tax_rate_bps,
            "tax_label": tax_label or "Tax",
        }
    return buyers


def _document(
    *,
    invoice: Invoice,
    computed: Computed,
    totals: Totals,
    buyer: dict[str, Any],
    number: str | None,
    finalized_at: str | None,
    due_at: str | None,
    prepaid_applied: int,
) -> dict[str, Any]:
    currency = invoice.currency
    money = _money_of(currency)
    return {
        "schema": "tandem.invoice/1",
        "key": invoice.key,
        "kind": invoice.kind,
        "number": number,
        "issuer": invoice.issuer,
        "currency": currency,
        "status": "draft" if number is None else "final",
        "period": {
            "start": invoice.period_start.isoformat(),
            "end": invoice.period_end.isoformat(),
        },
        "job": invoice.job,
        "buyer": {"organization": invoice.organization_id, **buyer},
        "finalized_at": finalized_at,
        "due_at": due_at,
        "as_of_position": computed.as_of_position,
        "lines": _document_lines(computed, currency),
        "totals": {
            "exact": money(totals.exact),
            "subtotal": money(totals.subtotal),
            "rounding": money(totals.rounding),
            "tax_rate_bps": totals.tax_rate_bps,
            "tax": money(totals.tax),
            "total": money(totals.total),
            "prepaid_applied": money(prepaid_applied),
            "amount_due": money(totals.total - prepaid_applied),
        },
    }


def _document_json(
    *,
    invoice: Invoice,
    computed: Computed,
    totals: Totals,
    buyer: dict[str, Any],
    number: str | None,
    finalized_at: str | None,
    due_at: str | None,
    prepaid_applied: int,
) -> bytes:
    """``canonical(_document(...))``, byte for byte, with the lines taken from
    ``computed.document_lines_json`` (made ahead, as text) when there: the rest of
    the document is encoded with a placeholder for its lines, which the lines' text
    then replaces. The placeholder, ``"lines":0``, cannot occur elsewhere: a quote
    inside a string value is escaped, and no other object of the document has a key
    ``lines``. (tests/invoicing/test_invoice_documents.py holds the two equal.)"""
    lines = computed.document_lines_json
    if lines is None:
        lines = CANONICAL_JSON.encode(_document_lines(computed, invoice.currency))
    head = _document(
        invoice=invoice,
        computed=dataclasses.replace(computed, lines=[]),
        totals=totals,
        buyer=buyer,
        number=number,
        finalized_at=finalized_at,
        due_at=due_at,
        prepaid_applied=prepaid_applied,
    )
    head["lines"] = 0
    return CANONICAL_JSON.encode(head).replace(b'"lines":0', b'"lines":' + lines, 1)


class _JsonStrings(dict[str, str]):
    """Strings as canonical JSON (quoted, escaped as ``canonical`` escapes them),
    each distinct one encoded once."""

    def __missing__(self, value: str) -> str:
        encoded = self[value] = json_text(value)
        return encoded


def _document_lines_json(
    computed: Computed, currency: str, strings: _JsonStrings, texts: _MoneyTexts | None = None
) -> bytes:
    """``canonical(_document_lines(computed, currency))``, made as text: the keys
    written in sorted order, strings encoded by ``canonical`` (``strings``), numbers
    as Python writes integers, amounts' texts digits, sign and point only. A month
    close makes some 60,000 lines: a dict per line, amount and entry, then encoded,
    cost it several times more. (tests/invoicing/test_invoice_documents.py holds the
    two equal.) ``texts``: the amounts' texts in ``currency`` made so far, shared by
    the invoices of a close's chunk as ``strings`` is."""
    text = texts if texts is not None else _MoneyTexts(currency)
    positions = computed.positions
    out = []
    for index, line in enumerate(computed.lines, start=1):
        amount = cents(line.exact_micros, currency)
        entries = ",".join(
            [
                f'{{"amount_micros":{value},"position":{positions[transfer_id]},'
                f'"transfer_id":{strings[transfer_id]}}}'
                for transfer_id, value in sorted(line.entries.items())
            ]
        )
        out.append(
            f'{{"amount":{{"micros":{amount},"text":"{text[amount]}"}},'
            f'"description":{strings[line.description]},"entries":[{entries}],'
            f'"exact":{{"micros":{line.exact_micros},"text":"{text[line.exact_micros]}"}},'
            f'"gpu_model":{strings[line.gpu_model]},"job":{strings[line.job]},'
            f'"model":{strings[line.model]},"ordinal":{index},"price_unit":{line.price_unit},'
            f'"product":{strings[line.product]},"quantity":{line.quantity},'
            f'"unit":{strings[line.unit]},"unit_price":{{"micros":{line.unit_price_micros},'
            f'"text":"{text[line.unit_price_micros]}"}}}}'
        )
    return f"[{','.join(out)}]".encode()


def _document_lines(computed: Computed, currency: str) -> list[dict[str, Any]]:
    """The lines of an invoice's document (what most of it is)."""
    money = _money_of(currency)
    positions = computed.positions
    return [
        {
            "ordinal": index,
            "product": line.product,
            "description": line.description,
            "job": line.job,
            "model": line.model,
            "gpu_model": line.gpu_model,
            "quantity": line.quantity,
            "unit": line.unit,
            "unit_price": money(line.unit_price_micros),
            "price_unit": line.price_unit,
            "exact": money(line.exact_micros),
            "amount": money(cents(line.exact_micros, currency)),
            "entries": [
                {
                    "transfer_id": transfer_id,
                    "position": positions[transfer_id],
                    "amount_micros": amount,
                }
                for transfer_id, amount in sorted(line.entries.items())
            ],
        }
        for index, line in enumerate(computed.lines, start=1)
    ]
