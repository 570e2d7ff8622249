"""Reads of the finance exports, for the apps above (the portal's finance pages)."""

from __future__ import annotations

from django.db.models import QuerySet

from exports.models import FinanceExport

# The app's public surface for the apps above it:
from exports.monthly_report import revenue_by_month as revenue_by_month
from exports.reconciliation import Reconciliation as Reconciliation
from exports.reconciliation import reconciliation_compute as reconciliation_compute
from exports.reconciliation import reconciliation_report as reconciliation_report


def exports_recent() -> QuerySet[FinanceExport]:
    """Every finance export, newest first."""
    return FinanceExport.objects.order_by("-created_at", "-pk")
