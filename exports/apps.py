from __future__ import annotations

from django.apps import AppConfig


class ExportsConfig(AppConfig):
    """Finance exports and reports (pandas: CSV, Parquet, XLSX)."""

    name = "exports"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from exports import tasks  # noqa: F401  (the export actor)
