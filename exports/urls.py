from __future__ import annotations

from django.urls import path

from exports.apis import (
    ExportDetailApi,
    ExportDownloadApi,
    ExportListCreateApi,
    MonthlyReportApi,
    ReconciliationApi,
    RevenueChartApi,
)

urlpatterns = [
    path("exports/", ExportListCreateApi.as_view(), name="finance-exports"),
    path("exports/<id:export_id>", ExportDetailApi.as_view(), name="finance-export-detail"),
    path(
        "exports/<id:export_id>/download",
        ExportDownloadApi.as_view(),
        name="finance-export-download",
    ),
    path("reconciliation", ReconciliationApi.as_view(), name="finance-reconciliation"),
    path("reports/monthly", MonthlyReportApi.as_view(), name="finance-report-monthly"),
    path("reports/revenue-chart.png", RevenueChartApi.as_view(), name="finance-revenue-chart"),
]
