"""The billing tables moved to their apps without moving data: a database made
before the split (billing's models at billing 0011, payments at 0005) migrates forward,
and what it held is read through the new apps' models."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [
    ("billing", "0011_invoice_document_json"),
    ("payments", "0005_invoice_refunds"),
]


def _migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


@pytest.mark.django_db(transaction=True)
def test_a_database_from_before_the_split_migrates_forward_with_its_rows():
    # given the database as it was before the split, with an account, a price, an
    # invoice and an invoice payment written through the old app's models
    old = _migrate(BEFORE).loader.project_state(BEFORE).apps
    organization = old.get_model("core", "Organization").objects.create(name="Acme", kind="buyer")
    account = old.get_model("billing", "Account").objects.create(
        organization_id=organization.pk, kind="credit", currency="USD", normal_side="C"
    )
    old.get_model("billing", "Balance").objects.create(account_id=account.pk)
    invoice = old.get_model("billing", "Invoice").objects.create(
        key="monthly:moved",
        organization_id=organization.pk,
        kind="monthly",
        currency="USD",
        period_start="2026-11-01T00:00:00Z",
        period_end="2026-12-01T00:00:00Z",
        issuer="TDM",
        generated_at="2026-12-01T00:00:00Z",
        grace_ends_at="2026-12-04T00:00:00Z",
    )

    # when it migrates forward
    leaf = MigrationExecutor(connection).loader.graph.leaf_nodes()
    _migrate(leaf)

    # then the rows are the new apps' own, in the same tables
    from invoicing.models import Invoice
    from ledger.models import Account, Balance

    moved = Account.objects.get(pk=account.pk)
    assert (moved.organization_id, moved.kind, moved.currency) == (organization.pk, "credit", "USD")
    assert Balance.objects.filter(account_id=account.pk).exists()
    assert Invoice.objects.get(pk=invoice.pk).key == "monthly:moved"
    assert Account._meta.db_table == "billing_account"
    assert Invoice._meta.db_table == "billing_invoice"
