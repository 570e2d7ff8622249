from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    """The billing tables' migration history, and nothing else.

    The models moved to ``ledger``, ``pricing``, ``invoicing`` and ``exports`` (their
    tables keep the ``billing_`` names: ``Meta.db_table``). These migrations create
    the tables on a new database, and an existing one migrates forward through them;
    the last one hands the models' state to their new apps."""

    name = "billing"
    verbose_name = "Billing (migration history)"
