"""Billing's models moved to the ledger, pricing, invoicing and exports apps, with their
tables: state only (``SeparateDatabaseAndState``), no data moves, no table changes.
After this migration billing holds only the history that creates the tables."""

from django.db import migrations

MOVED = {
    "ledger": ("account", "balance", "posting", "hold"),
    "pricing": ("price",),
    "invoicing": (
        "billingprofile",
        "documentsequence",
        "invoice",
        "invoiceline",
        "invoicelineentry",
        "creditnote",
        "usageaccrual",
        "providerstatement",
    ),
    "exports": ("financeexport",),
}


def content_types_follow(apps, schema_editor):
    """Permissions and admin history follow the models: their content types are
    relabelled (a new database has none yet; they are made after migrating)."""
    content_type = apps.get_model("contenttypes", "ContentType")
    for app_label, models in MOVED.items():
        for model in models:
            if not content_type.objects.filter(app_label=app_label, model=model).exists():
                content_type.objects.filter(app_label="billing", model=model).update(
                    app_label=app_label
                )


def content_types_back(apps, schema_editor):
    content_type = apps.get_model("contenttypes", "ContentType")
    for app_label, models in MOVED.items():
        content_type.objects.filter(app_label=app_label, model__in=models).update(
            app_label="billing"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0011_invoice_document_json"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("ledger", "0001_initial"),
        ("pricing", "0001_initial"),
        ("invoicing", "0001_initial"),
        ("exports", "0001_initial"),
        ("payments", "0006_invoice_moved_to_invoicing"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name='account',
                    name='organization',
                ),
                migrations.RemoveField(
                    model_name='hold',
                    name='debit_account',
                ),
                migrations.RemoveField(
                    model_name='balance',
                    name='account',
                ),
                migrations.RemoveField(
                    model_name='posting',
                    name='account',
                ),
                migrations.RemoveField(
                    model_name='hold',
                    name='credit_account',
                ),
                migrations.RemoveField(
                    model_name='billingprofile',
                    name='organization',
                ),
                migrations.RemoveField(
                    model_name='creditnote',
                    name='invoice',
                ),
                migrations.DeleteModel(
                    name='DocumentSequence',
                ),
                migrations.DeleteModel(
                    name='FinanceExport',
                ),
                migrations.RemoveField(
                    model_name='invoice',
                    name='organization',
                ),
                migrations.RemoveField(
                    model_name='invoiceline',
                    name='invoice',
                ),
                migrations.RemoveField(
                    model_name='invoicelineentry',
                    name='line',
                ),
                migrations.RemoveField(
                    model_name='posting',
                    name='entry',
                ),
                migrations.DeleteModel(
                    name='Price',
                ),
                migrations.RemoveField(
                    model_name='providerstatement',
                    name='organization',
                ),
                migrations.RemoveField(
                    model_name='usageaccrual',
                    name='buyer',
                ),
                migrations.DeleteModel(
                    name='Balance',
                ),
                migrations.DeleteModel(
                    name='Account',
                ),
                migrations.DeleteModel(
                    name='Hold',
                ),
                migrations.DeleteModel(
                    name='BillingProfile',
                ),
                migrations.DeleteModel(
                    name='CreditNote',
                ),
                migrations.DeleteModel(
                    name='Invoice',
                ),
                migrations.DeleteModel(
                    name='InvoiceLine',
                ),
                migrations.DeleteModel(
                    name='InvoiceLineEntry',
                ),
                migrations.DeleteModel(
                    name='Posting',
                ),
                migrations.DeleteModel(
                    name='ProviderStatement',
                ),
                migrations.DeleteModel(
                    name='UsageAccrual',
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_follow, content_types_back),
    ]
