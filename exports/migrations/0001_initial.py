"""The exports models, moved here from billing with their tables (``Meta.db_table`` keeps
the ``billing_`` names): state only, no data moves. On a new database billing's
migrations create the tables; this one gives their state to this app."""


from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('billing', '0011_invoice_document_json'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='FinanceExport',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('kind', models.CharField(choices=[('invoice_register', 'Invoice Register'), ('revenue', 'Revenue'), ('provider_earnings', 'Provider Earnings'), ('ar_aging', 'Ar Aging'), ('trial_balance', 'Trial Balance'), ('deferred_revenue', 'Deferred Revenue'), ('usage_detail', 'Usage Detail')], max_length=32)),
                        ('format', models.CharField(choices=[('csv', 'Csv'), ('parquet', 'Parquet'), ('xlsx', 'Xlsx')], max_length=8)),
                        ('params', models.JSONField(default=dict)),
                        ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed')], default='queued', max_length=16)),
                        ('requested_by', models.CharField(max_length=200)),
                        ('rows_total', models.BigIntegerField(blank=True, null=True)),
                        ('rows_written', models.BigIntegerField(default=0)),
                        ('file_name', models.CharField(blank=True, default='', max_length=200)),
                        ('size_bytes', models.BigIntegerField(default=0)),
                        ('sha256', models.CharField(blank=True, default='', max_length=64)),
                        ('error', models.CharField(blank=True, default='', max_length=1000)),
                        ('attempts', models.PositiveIntegerField(default=0)),
                        ('created_at', models.DateTimeField()),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        'db_table': 'billing_financeexport',
                        'indexes': [models.Index(fields=['created_at'], name='finance_export_created')],
                        'constraints': [models.CheckConstraint(condition=models.Q(('status__in', ['queued', 'running', 'succeeded', 'failed'])), name='finance_export_status_valid'), models.CheckConstraint(condition=models.Q(('format__in', ['csv', 'parquet', 'xlsx'])), name='finance_export_format_valid'), models.CheckConstraint(condition=models.Q(('rows_written__gte', 0)), name='finance_export_rows_non_negative')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
