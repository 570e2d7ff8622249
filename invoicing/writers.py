"""Bulk writers for the month close: invoice and line rows written with PostgreSQL
COPY (plain inserts elsewhere), ids taken ahead from their sequences."""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from django.db import connection, models

from core.db import (
    copy_statement,
    is_postgres,
    server_cursor,
)
from invoicing.amounts import cents
from invoicing.lines import Computed
from invoicing.models import (
    Invoice,
    InvoiceLine,
    InvoiceLineEntry,
)
from invoicing.queries import _chunks


def _write_lines(invoice: Invoice, computed: Computed) -> None:
    _write_lines_many([(invoice, computed)], replacing=[invoice.pk])


def _line_rows(invoice: Invoice, computed: Computed) -> list[InvoiceLine]:
    return [
        InvoiceLine(
            invoice=invoice,
            ordinal=index,
            product=line.product,
            description=line.description[:300],
            job=line.job[:200],
            model=line.model[:200],
            gpu_model=line.gpu_model[:100],
            region=line.region[:64],
            quantity=line.quantity,
            unit=line.unit,
            unit_price_micros=line.unit_price_micros,
            price_unit=line.price_unit,
            exact_micros=line.exact_micros,
            amount_micros=cents(line.exact_micros, invoice.currency),
        )
        for index, line in enumerate(computed.lines, start=1)
    ]


def _ids_take(model: type[models.Model], count: int) -> list[int]:
    """``count`` ids from the table's own sequence (PostgreSQL), so that rows can go
    in by COPY and be referred to (a line by its links) without being read back."""
    if not count:
        return []
    with connection.wrap_database_errors:
        cursor = server_cursor()
        # The sequence's name looked up once, not once per id.
        cursor.execute(
            "SELECT nextval(s) FROM CAST(pg_get_serial_sequence(%s, 'id') AS regclass) AS s, "
            "generate_series(1, %s)",
            [model._meta.db_table, count],
        )
        return [row[0] for row in cursor.fetchall()]


_LINE_COLUMNS = [
    "id",
    "invoice_id",
    "ordinal",
    "product",
    "description",
    "job",
    "model",
    "gpu_model",
    "region",
    "quantity",
    "unit",
    "unit_price_micros",
    "price_unit",
    "exact_micros",
    "amount_micros",
]


def _write_lines_many(invoices: list[tuple[Invoice, Computed]], *, replacing: list[int]) -> None:
    """Write the lines (and their links to journal entries) of these invoices, in
    place of those the invoices ``replacing`` had (drafts; new invoices have none).
    On PostgreSQL: one COPY each for the lines and the links, the lines' ids taken
    from their sequence first."""
    for chunk in _chunks(replacing):
        InvoiceLine.objects.filter(invoice_id__in=chunk).delete()
    if not is_postgres():
        made = InvoiceLine.objects.bulk_create(
            [line for invoice, computed in invoices for line in _line_rows(invoice, computed)]
        )
        by_key = {(line.invoice_id, line.ordinal): line for line in made}
        InvoiceLineEntry.objects.bulk_create(
            InvoiceLineEntry(
                line=by_key[(invoice.pk, index)],
                entry_position=computed.positions[transfer_id],
                transfer_id=transfer_id,
                amount_micros=amount,
            )
            for invoice, computed in invoices
            for index, line in enumerate(computed.lines, start=1)
            for transfer_id, amount in sorted(line.entries.items())
        )
        return
    ids = iter(_ids_take(InvoiceLine, sum(len(computed.lines) for _, computed in invoices)))
    # The rows as COPY's text, made here: psycopg's write_row, per value, cost as much
    # as the server took to store them (a close writes ~160,000 of these rows).
    text = _CopyText()
    lines: list[str] = []
    links: list[str] = []
    for invoice, computed in invoices:
        currency, invoice_id = invoice.currency, invoice.pk
        positions = computed.positions
        for index, line in enumerate(computed.lines, start=1):
            line_id = next(ids)
            # The same values as _line_rows.
            lines.append(
                f"{line_id}\t{invoice_id}\t{index}\t{text[line.product]}\t"
                f"{text[line.description[:300]]}\t{text[line.job[:200]]}\t"
                f"{text[line.model[:200]]}\t{text[line.gpu_model[:100]]}\t"
                f"{text[line.region[:64]]}\t{line.quantity}\t{text[line.unit]}\t"
                f"{line.unit_price_micros}\t{line.price_unit}\t{line.exact_micros}\t"
                f"{cents(line.exact_micros, currency)}\n"
            )
            links.extend(
                f"{line_id}\t{positions[transfer_id]}\t{text[transfer_id]}\t{amount}\n"
                for transfer_id, amount in sorted(line.entries.items())
            )
    columns = ["line_id", "entry_position", "transfer_id", "amount_micros"]
    with connection.wrap_database_errors:
        cursor = server_cursor()
        for statement, rows in (
            (copy_statement(InvoiceLine, _LINE_COLUMNS), lines),
            (copy_statement(InvoiceLineEntry, columns), links),
        ):
            with cursor.copy(statement) as copy:
                for offset in range(0, len(rows), 5000):
                    copy.write("".join(rows[offset : offset + 5000]))


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class _CopyText(dict[str, str]):
    """Text values escaped for COPY's text format (backslash, tab, newline, carriage
    return), each distinct value escaped once."""

    def __missing__(self, value: str) -> str:
        escaped = self[value] = value.translate(_COPY_ESCAPES)
        return escaped


def _invoices_write(invoices: Iterable[tuple[Invoice, str]], *, new: int) -> None:
    """Write invoices as they come, each with its document as canonical JSON text:
    drafts (with a pk) updated in place, ``new`` new ones inserted (their pks set).
    On PostgreSQL the new ones go in by one COPY, which the server stores as the
    rows arrive: the documents of the later invoices are made (``invoices`` may be a
    generator) while it stores the earlier ones, the two cores working at once."""
    drafts: list[Invoice] = []
    if not is_postgres():
        made: list[Invoice] = []
        for invoice, _ in invoices:
            (made if invoice.pk is None else drafts).append(invoice)
        Invoice.objects.bulk_create(made)
    else:
        fields = [f for f in Invoice._meta.concrete_fields if f.name != "document"]
        # The row's values but the id, read by one C call an invoice.
        values = attrgetter(*[f.attname for f in fields if not f.primary_key])
        ids = iter(_ids_take(Invoice, new))
        with connection.wrap_database_errors:
            cursor = server_cursor()
            sql = copy_statement(Invoice, [str(f.column) for f in fields] + ["document"])
            with cursor.copy(sql) as copy:
                for invoice, text in invoices:
                    if invoice.pk is not None:
                        drafts.append(invoice)
                        continue
                    invoice.pk = next(ids)
                    invoice._state.adding = False
                    copy.write_row((invoice.pk, *values(invoice), text))
    for invoice in drafts:
        invoice.save()
