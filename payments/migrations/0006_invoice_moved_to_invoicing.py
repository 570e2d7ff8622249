"""Payments' invoice references follow Invoice to the invoicing app: state only, the
columns and their foreign keys stay as they are."""

import django.db.models.deletion

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('invoicing', '0001_initial'),
        ('payments', '0005_invoice_refunds'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='invoicecollection',
                    name='invoice',
                    field=models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='collection', to='invoicing.invoice'),
                ),
                migrations.AlterField(
                    model_name='invoicepayment',
                    name='invoice',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='invoicing.invoice'),
                ),
                migrations.AlterField(
                    model_name='invoicerefund',
                    name='invoice',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='invoicing.invoice'),
                ),
            ],
            database_operations=[],
        ),
    ]
