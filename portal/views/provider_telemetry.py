"""A node's telemetry over the last hours: utilization, memory, temperature and power
of each GPU, one chart per measurement, each over a table with the same figures.
Read from the minute rollups (``providers.selectors.node_telemetry_history``),
folded into buckets so a chart and its table stay a readable size whatever the
window."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from portal.access import PROVIDER_KINDS, member_page
from providers import selectors as supply

# The windows offered, and the bucket each is folded into (about 60–100 rows).
WINDOWS = {1: timedelta(minutes=1), 6: timedelta(minutes=5), 24: timedelta(minutes=15)}
DEFAULT_HOURS = 6
MEASUREMENTS = [
    # (key, title, unit, the point's attribute)
    ("utilization", "Utilization", "%", "utilization_pct"),
    ("memory", "Memory used", "MiB", "memory_used_mib"),
    ("temperature", "Temperature (highest)", "°C", "temperature_c"),
    ("power", "Power", "W", "power_w"),
]


class HistoryForm(forms.Form):
    hours = forms.TypedChoiceField(
        required=False,
        coerce=int,
        empty_value=DEFAULT_HOURS,
        label="Window",
        choices=[(h, f"Last {h} hour{'s' if h > 1 else ''}") for h in WINDOWS],
    )


@require_http_methods(["GET"])
@member_page(kinds=PROVIDER_KINDS)
def node_history(request: HttpRequest, node_id: int) -> HttpResponse:
    node = supply.node_get(
        organization=request.member.organization,  # type: ignore[attr-defined]
        node_id=node_id,
    )
    form = HistoryForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return render(
            request,
            "portal/provider/node_history.html",
            {"node": node, "form": form, "charts": None},
            status=400,
        )
    hours = (form.cleaned_data.get("hours") if form.is_bound else None) or DEFAULT_HOURS
    bucket = WINDOWS[hours]
    now = timezone.now()
    until = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    since = until - timedelta(hours=hours)
    points = supply.node_telemetry_history(node=node, since=since, until=until, bucket=bucket)
    gpus = sorted({point.gpu_index for point in points})
    starts = sorted({point.start for point in points})
    at = {(point.start, point.gpu_index): point for point in points}
    charts = []
    for key, title, unit, attribute in MEASUREMENTS:
        rows = [
            {
                "start": start,
                "values": [getattr(at.get((start, gpu)), attribute, None) for gpu in gpus],
            }
            for start in starts
        ]
        charts.append(
            {
                "key": key,
                "title": title,
                "unit": unit,
                "rows": rows,
                "chart": {
                    "type": "line",
                    "unit": unit,
                    "labels": [f"{start:%H:%M}" for start in starts],
                    "datasets": [
                        {"label": f"GPU {gpu}", "data": [row["values"][n] for row in rows]}
                        for n, gpu in enumerate(gpus)
                    ],
                },
            }
        )
    return render(
        request,
        "portal/provider/node_history.html",
        {
            "node": node,
            "form": form,
            "charts": charts if points else [],
            "gpus": gpus,
            "hours": hours,
            "bucket_minutes": int(bucket.total_seconds()) // 60,
            "since": since,
            "until": until,
        },
    )
