from __future__ import annotations

from django.apps import AppConfig


class InvoicingConfig(AppConfig):
    """Accruals, drafts, numbering, documents, finalization, credit notes, provider
    statements, the month close and replay."""

    name = "invoicing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the accrual and fine-tune minimum followers, so
        # `manage.py run_follower` runs them.
        from invoicing import accruals, job_invoices  # noqa: F401
