"""``manage.py export_finance``: write a finance export, or the reconciliation, the
monthly report or the revenue chart, from the command line.

    python manage.py export_finance revenue --format parquet --period 2026-10 -o rev.parquet
    python manage.py export_finance trial_balance --as-of 2026-10-31 -o tb.xlsx
    python manage.py export_finance usage_detail --organization 3 --period 2026-10 -o u.csv
    python manage.py export_finance usage_detail --organization 3 --period 2026-10 --background
    python manage.py export_finance reconciliation
    python manage.py export_finance report --period 2026-10 -o report.html
    python manage.py export_finance chart --months 12 -o revenue.png

An export is recorded like one asked for over the API (``FinanceExport``), written
in-process chunk by chunk into EXPORT_DIR and copied to ``--output``; with
``--background`` it is handed to the workers instead and its id printed. The
reconciliation exits 1 when anything is unexplained.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.errors import InvalidInput
from core.money import Money
from exports.models import FinanceExport

REPORTS = ("reconciliation", "report", "chart")


class Command(BaseCommand):
    help = "Write a finance export (CSV, Parquet, XLSX), the reconciliation or the monthly report."

    def add_arguments(self, parser: Any) -> None:
        kinds = [c.value for c in FinanceExport.Kind]
        parser.add_argument("what", choices=[*kinds, *REPORTS])
        parser.add_argument(
            "--format", default=None, choices=[c.value for c in FinanceExport.Format]
        )
        parser.add_argument("--period", help="a month, YYYY-MM")
        parser.add_argument("--as-of", dest="as_of", help="a date, or a date and time with a zone")
        parser.add_argument("--currency")
        parser.add_argument("--organization", type=int, help="usage_detail: the buyer's id")
        parser.add_argument("--months", type=int, default=12, help="chart: how many months")
        parser.add_argument("-o", "--output", help="where to write the file")
        parser.add_argument(
            "--background", action="store_true", help="hand the export to the workers"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["what"] in REPORTS:
                self._report(options)
            else:
                self._export(options)
        except InvalidInput as error:
            raise CommandError(f"{error.details.get('field', 'input')}: {error.message}") from None

    def _export(self, options: dict[str, Any]) -> None:
        from exports import services

        output = Path(options["output"]) if options["output"] else None
        fmt = options["format"] or (output.suffix.lstrip(".") if output else "csv")
        params = {
            name: options[name]
            for name in ("period", "as_of", "currency", "organization")
            if options[name] is not None
        }
        export = services.export_create(
            kind=options["what"],
            format=fmt,
            params=params,
            requested_by="manage.py export_finance",
            enqueue=options["background"],
        )
        if options["background"]:
            self.stdout.write(f"export {export.pk} queued: {export.kind}.{export.format}")
            return
        ran = services.export_run(export_id=export.pk)
        if ran is None or ran.status != FinanceExport.Status.SUCCEEDED:
            raise CommandError(f"export {export.pk} failed: {ran.error if ran else 'gone'}")
        export = ran
        path = services.export_path(export)
        if output is not None:
            shutil.copyfile(path, output)
            path = output
        self.stdout.write(f"export {export.pk}: {export.rows_written} rows -> {path}")

    def _report(self, options: dict[str, Any]) -> None:
        from exports import services
        from exports.services import period_check

        currency = options["currency"] or settings.TANDEM_CURRENCY
        what = options["what"]
        if what == "reconciliation":

            def money(micros: int) -> str:
                return Money(micros, currency).format()

            result = services.reconciliation_compute(currency=currency)
            for section in result.sections:
                self.stdout.write(
                    f"{section.name:22} ledger {money(section.ledger_micros):>16}"
                    f"  documents {money(section.documents_micros):>16}"
                    f"  unexplained {money(section.unexplained_micros)}"
                )
                for d in section.differences:
                    label = "explained" if d.explained else "UNEXPLAINED"
                    self.stdout.write(
                        f"    {label}: {d.reference} {money(d.amount_micros)}: {d.cause}"
                    )
            unexplained = money(result.unexplained_micros)
            self.stdout.write(f"unexplained difference: {unexplained} {currency}")
            if result.unexplained_micros:
                raise CommandError("the books do not reconcile")
            return
        if what == "report":
            if not options["period"]:
                raise CommandError("report needs --period YYYY-MM")
            body = services.monthly_report_html(
                period=period_check(options["period"]), currency=currency
            )
            data = body.encode()
        else:
            until = period_check(options["period"]) if options["period"] else None
            data = services.revenue_chart_png(
                currency=currency, months=options["months"], until=until
            )
        if not options["output"]:
            raise CommandError(f"{what} needs --output FILE")
        Path(options["output"]).write_bytes(data)
        self.stdout.write(f"{what}: {len(data)} bytes -> {options['output']}")
