from __future__ import annotations

from django.apps import AppConfig


class LedgerConfig(AppConfig):
    """Accounts, the journal and its postings, balances, two-phase holds, credit grants."""

    name = "ledger"
    default_auto_field = "django.db.models.BigAutoField"
