"""The revenue chart (matplotlib, a PNG) and the monthly finance report (HTML): the
month's revenue by product, its invoices by status, and the reconciliation as of
now (``exports/reconciliation.py``)."""

from __future__ import annotations

import base64
import io
from datetime import date
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.template import Context, Engine
from django.utils import timezone

from core.money import Money
from exports.receivables import invoices_by_status
from exports.reconciliation import reconciliation_compute
from exports.revenue import revenue_books_version, revenue_frame
from invoicing.selectors import month_bounds

# --- the revenue chart and the monthly report ----------------------------------------

PRODUCT_COLORS = {
    "fine_tune": "#4c72b0",
    "inference": "#55a868",
    "gpu_lease": "#c44e52",
}


def revenue_by_month(*, currency: str, months: int = 12, until: date | None = None) -> Any:
    """Revenue and fees per month and product (micro-units), the last ``months``
    months up to ``until`` (a month), as a pivot table: a row per month, a column per product.

    Kept in the cache under the books' version (``revenue_books_version``): the
    attribution reads every accrual of the months, which a busy platform has by the
    hundred thousand, so it is computed once per change of the revenue accounts or
    the accruals, not once per page view."""
    until = (until or timezone.now().date()).replace(day=1)
    index = until.year * 12 + until.month - 1 - (months - 1)
    first = date(index // 12, index % 12 + 1, 1)
    version = revenue_books_version(currency=currency)
    key = "exports:revenue-by-month:{}:{:%Y-%m}:{:%Y-%m}:{}:{}".format(
        currency, first, until, *version
    )
    pivot = cache.get(key)
    if pivot is None:
        pivot = _revenue_pivot(currency=currency, first=first, until=until)
        cache.set(key, pivot, timeout=REVENUE_CACHE_SECONDS)
    return pivot


REVENUE_CACHE_SECONDS = 24 * 3600  # a version that is not read again expires


def _revenue_pivot(*, currency: str, first: date, until: date) -> Any:
    df = revenue_frame(currency=currency, from_month=first)
    df = df[(df["month"] >= f"{first:%Y-%m}") & (df["month"] <= f"{until:%Y-%m}")]
    pivot = df.pivot_table(
        index="month", columns="product", values="total_micros", aggfunc="sum", fill_value=0
    )
    names = [f"{m:%Y-%m}" for m in _months(first, until)]
    return pivot.reindex(names, fill_value=0).astype("int64")


def _months(first: date, last: date) -> list[date]:
    out = []
    current = first
    while current <= last:
        out.append(current)
        current = month_bounds(current)[1].date()
    return out


def revenue_chart_png(*, currency: str, months: int = 12, until: date | None = None) -> bytes:
    """A stacked bar chart of monthly revenue (revenue and fees accounts) by product."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    from matplotlib.figure import Figure

    pivot = revenue_by_month(currency=currency, months=months, until=until)
    figure = Figure(figsize=(9, 4.5), dpi=100)
    axes = figure.subplots()
    positions = list(range(len(pivot.index)))
    bottom = [0.0] * len(positions)
    for product in pivot.columns:
        # Plotted in currency units: the picture needs no exactness; the export does.
        values = [int(v) / 1_000_000 for v in pivot[product]]
        axes.bar(
            positions,
            values,
            bottom=bottom,
            label=product,
            color=PRODUCT_COLORS.get(product),
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_xticks(positions, labels=list(pivot.index))
    axes.set_title(f"Monthly revenue by product ({currency})")
    axes.set_ylabel(currency)
    axes.tick_params(axis="x", labelrotation=45)
    if len(pivot.columns):
        axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


_REPORT = Engine(autoescape=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Finance report {{ period }} ({{ currency }})</title>
<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b00; font-weight: bold; } .ok { color: #070; }
</style></head><body>
<h1>Finance report {{ period }}</h1>
<p>Currency {{ currency }} · generated {{ generated_at }} · ledger position {{ position }}</p>
<h2>Revenue by product</h2>
<img alt="Monthly revenue by product" src="data:image/png;base64,{{ chart }}">
<table><tr><th>product</th><th>model</th><th>GPU model</th><th>region</th>
<th>revenue</th><th>fees</th><th>total</th></tr>
{% for r in revenue %}<tr><td>{{ r.product }}</td><td>{{ r.model }}</td><td>{{ r.gpu_model }}</td>
<td>{{ r.region }}</td><td class="n">{{ r.revenue }}</td><td class="n">{{ r.fees }}</td>
<td class="n">{{ r.total }}</td></tr>{% endfor %}
<tr><th colspan="6">total</th><th class="n">{{ revenue_total }}</th></tr></table>
<h2>Invoices of the month</h2>
<table><tr><th>status</th><th>invoices</th></tr>
{% for status, n in invoices %}<tr><td>{{ status }}</td><td class="n">{{ n }}</td></tr>{% endfor %}
</table>
<h2>Reconciliation</h2>
<p class="{% if has_unexplained %}bad{% else %}ok{% endif %}">
Unexplained difference: {{ unexplained }}</p>
<table><tr><th>section</th><th>ledger</th><th>documents</th><th>difference</th>
<th>explained</th><th>unexplained</th></tr>
{% for s in sections %}<tr><td>{{ s.name }}</td><td class="n">{{ s.ledger }}</td>
<td class="n">{{ s.documents }}</td><td class="n">{{ s.difference }}</td>
<td class="n">{{ s.explained }}</td><td class="n">{{ s.unexplained }}</td></tr>{% endfor %}
</table>
{% if differences %}<table><tr><th>section</th><th>reference</th><th>cause</th>
<th>ledger</th><th>documents</th><th>explained</th></tr>
{% for d in differences %}<tr><td>{{ d.section }}</td><td>{{ d.reference }}</td>
<td>{{ d.cause }}</td>
<td class="n">{{ d.ledger }}</td><td class="n">{{ d.documents }}</td>
<td>{{ d.explained|yesno:"yes,no" }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>
"""
)


def monthly_report_html(*, period: date, currency: str | None = None) -> str:
    """The month's finance report: the revenue chart (embedded), revenue by product,
    the month's invoices by status, and the reconciliation as of now."""

    currency = currency or settings.TANDEM_CURRENCY

    def money(micros: int) -> str:
        return Money(int(micros), currency).format()

    revenue = revenue_frame(currency=currency, period=period)
    reconciliation = reconciliation_compute(currency=currency)
    chart = revenue_chart_png(currency=currency, until=period)
    context = {
        "period": f"{period:%Y-%m}",
        "currency": currency,
        "generated_at": timezone.now().isoformat(timespec="seconds"),
        "position": reconciliation.position,
        "chart": base64.b64encode(chart).decode(),
        "revenue": revenue.to_dict("records"),
        "revenue_total": money(int(revenue["total_micros"].sum())),
        "invoices": sorted(invoices_by_status(period).items()),
        "unexplained": money(reconciliation.unexplained_micros),
        "has_unexplained": reconciliation.unexplained_micros != 0,
        "sections": [
            {
                "name": s.name,
                "ledger": money(s.ledger_micros),
                "documents": money(s.documents_micros),
                "difference": money(s.difference_micros),
                "explained": money(s.explained_micros),
                "unexplained": money(s.unexplained_micros),
            }
            for s in reconciliation.sections
        ],
        "differences": [
            {
                "section": d.section,
                "reference": d.reference,
                "cause": d.cause,
                "ledger": money(d.ledger_micros),
                "documents": money(d.documents_micros),
                "explained": d.explained,
            }
            for d in reconciliation.differences
        ],
    }
    return _REPORT.render(Context(context))
