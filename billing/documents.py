"""An invoice's document in its three renderings: JSON (canonical bytes), HTML (a
Django template) and PDF (reportlab, in invariant mode so the same document always
gives the same bytes). All three are made from ``Invoice.document`` — frozen at
finalization — so they cannot disagree with each other or with the ledger."""

from __future__ import annotations

import io
from typing import Any

from django.template.loader import render_to_string

from billing.invoicing import canonical
from billing.models import Invoice


def invoice_json(invoice: Invoice) -> bytes:
    return canonical(invoice.document or {})


def _tax_rate(doc: dict[str, Any]) -> str:
    bps = int(doc["totals"]["tax_rate_bps"])
    return f"{bps // 100}.{bps % 100:02d}%"


def invoice_html(invoice: Invoice) -> bytes:
    doc = invoice.document or {}
    return render_to_string(
        "billing/invoice.html", {"doc": doc, "tax_rate": _tax_rate(doc)}
    ).encode()


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
    story.append(
        Paragraph(
            f"Bill to: {buyer.get('legal_name', '')} {buyer.get('tax_id', '')}", styles["Normal"]
        )
    )
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
