"""A finance export's record: what was asked (kind, format, parameters), its state
and the file it produced. The table keeps its ``billing_`` name (``Meta.db_table``)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

# --- finance exports ------------------------------------------------------------


class FinanceExport(models.Model):
    """One finance export: asked for by a POST (or ``manage.py export_finance``),
    filled in chunks by a worker into ``settings.EXPORT_DIR``, then downloaded.
    ``rows_written`` / ``rows_total`` is its progress while it runs."""

    class Kind(models.TextChoices):
        INVOICE_REGISTER = "invoice_register"
        REVENUE = "revenue"
        PROVIDER_EARNINGS = "provider_earnings"
        AR_AGING = "ar_aging"
        TRIAL_BALANCE = "trial_balance"
        DEFERRED_REVENUE = "deferred_revenue"
        USAGE_DETAIL = "usage_detail"

    class Format(models.TextChoices):
        CSV = "csv"
        PARQUET = "parquet"
        XLSX = "xlsx"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    format = models.CharField(max_length=8, choices=Format.choices)
    params = models.JSONField(default=dict)  # checked by billing.exports.services
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    requested_by = models.CharField(max_length=200)
    rows_total = models.BigIntegerField(null=True, blank=True)  # null: not known yet
    rows_written = models.BigIntegerField(default=0)
    file_name = models.CharField(max_length=200, blank=True, default="")
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True, default="")
    error = models.CharField(max_length=1000, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_financeexport"
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed"]),
                name="finance_export_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(format__in=["csv", "parquet", "xlsx"]),
                name="finance_export_format_valid",
            ),
            models.CheckConstraint(
                condition=Q(rows_written__gte=0), name="finance_export_rows_non_negative"
            ),
        ]
        indexes = [models.Index(fields=["created_at"], name="finance_export_created")]

    def __str__(self) -> str:
        return f"export {self.pk} {self.kind}.{self.format} ({self.status})"
