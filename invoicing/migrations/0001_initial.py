"""The invoicing models, moved here from billing with their tables (``Meta.db_table`` keeps
the ``billing_`` names): state only, no data moves. On a new database billing's
migrations create the tables; this one gives their state to this app."""

import django.db.models.deletion
import invoicing.models

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('billing', '0011_invoice_document_json'),
        ('core', '0006_apikey_scope'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='BillingProfile',
                    fields=[
                        ('organization', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, primary_key=True, related_name='billing_profile', serialize=False, to='core.organization')),
                        ('legal_name', models.CharField(blank=True, default='', max_length=200)),
                        ('address', models.TextField(blank=True, default='')),
                        ('tax_id', models.CharField(blank=True, default='', max_length=64)),
                        ('tax_rate_bps', models.PositiveIntegerField(default=0)),
                        ('tax_label', models.CharField(blank=True, default='Tax', max_length=32)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        'db_table': 'billing_billingprofile',
                        'constraints': [models.CheckConstraint(condition=models.Q(('tax_rate_bps__lte', 10000)), name='billing_profile_tax_rate_valid')],
                    },
                ),
                migrations.CreateModel(
                    name='DocumentSequence',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('issuer', models.CharField(max_length=32)),
                        ('series', models.CharField(max_length=16)),
                        ('last_number', models.PositiveIntegerField(default=0)),
                    ],
                    options={
                        'db_table': 'billing_documentsequence',
                        'constraints': [models.UniqueConstraint(fields=('issuer', 'series'), name='document_sequence_unique')],
                    },
                ),
                migrations.CreateModel(
                    name='Invoice',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('key', models.CharField(max_length=240, unique=True)),
                        ('kind', models.CharField(choices=[('monthly', 'Monthly'), ('job', 'Job')], max_length=16)),
                        ('currency', models.CharField(max_length=3)),
                        ('period_start', models.DateTimeField()),
                        ('period_end', models.DateTimeField()),
                        ('job', models.CharField(blank=True, default='', max_length=200)),
                        ('status', models.CharField(choices=[('draft', 'Draft'), ('open', 'Open'), ('past_due', 'Past Due'), ('paid', 'Paid'), ('void', 'Void'), ('uncollectible', 'Uncollectible')], default='draft', max_length=16)),
                        ('issuer', models.CharField(max_length=32)),
                        ('number', models.CharField(blank=True, max_length=40, null=True)),
                        ('subtotal_exact_micros', models.BigIntegerField(default=0)),
                        ('subtotal_micros', models.BigIntegerField(default=0)),
                        ('rounding_micros', models.BigIntegerField(default=0)),
                        ('tax_rate_bps', models.PositiveIntegerField(default=0)),
                        ('tax_micros', models.BigIntegerField(default=0)),
                        ('total_micros', models.BigIntegerField(default=0)),
                        ('prepaid_applied_micros', models.BigIntegerField(default=0)),
                        ('amount_due_micros', models.BigIntegerField(default=0)),
                        ('amount_paid_micros', models.BigIntegerField(default=0)),
                        ('credited_micros', models.BigIntegerField(default=0)),
                        ('written_off_micros', models.BigIntegerField(default=0)),
                        ('generated_at', models.DateTimeField()),
                        ('grace_ends_at', models.DateTimeField()),
                        ('finalized_at', models.DateTimeField(blank=True, null=True)),
                        ('due_at', models.DateTimeField(blank=True, null=True)),
                        ('closed_at', models.DateTimeField(blank=True, null=True)),
                        ('payment_reference', models.CharField(blank=True, default='', max_length=255)),
                        ('document', invoicing.models.JSONTextField(blank=True, null=True)),
                        ('document_sha256', models.CharField(blank=True, default='', max_length=64)),
                        ('organization', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='core.organization')),
                    ],
                    options={
                        'db_table': 'billing_invoice',
                    },
                ),
                migrations.CreateModel(
                    name='CreditNote',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('key', models.CharField(max_length=240, unique=True)),
                        ('issuer', models.CharField(max_length=32)),
                        ('number', models.CharField(max_length=40)),
                        ('currency', models.CharField(max_length=3)),
                        ('amount_micros', models.BigIntegerField()),
                        ('tax_micros', models.BigIntegerField()),
                        ('total_micros', models.BigIntegerField()),
                        ('to_receivable_micros', models.BigIntegerField()),
                        ('to_credit_micros', models.BigIntegerField()),
                        ('reason', models.CharField(max_length=500)),
                        ('entry_position', models.BigIntegerField()),
                        ('issued_at', models.DateTimeField()),
                        ('issued_by', models.CharField(max_length=200)),
                        ('invoice', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='credit_notes', to='invoicing.invoice')),
                    ],
                    options={
                        'db_table': 'billing_creditnote',
                    },
                ),
                migrations.CreateModel(
                    name='InvoiceLine',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('ordinal', models.PositiveIntegerField()),
                        ('product', models.CharField(choices=[('fine_tune', 'Fine Tune'), ('inference', 'Inference'), ('gpu_lease', 'Gpu Lease'), ('other', 'Other')], max_length=16)),
                        ('description', models.CharField(max_length=300)),
                        ('job', models.CharField(blank=True, default='', max_length=200)),
                        ('model', models.CharField(blank=True, default='', max_length=200)),
                        ('gpu_model', models.CharField(blank=True, default='', max_length=100)),
                        ('region', models.CharField(blank=True, default='', max_length=64)),
                        ('quantity', models.BigIntegerField(default=0)),
                        ('unit', models.CharField(max_length=32)),
                        ('unit_price_micros', models.BigIntegerField(default=0)),
                        ('price_unit', models.BigIntegerField(default=1)),
                        ('exact_micros', models.BigIntegerField()),
                        ('amount_micros', models.BigIntegerField()),
                        ('invoice', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='lines', to='invoicing.invoice')),
                    ],
                    options={
                        'db_table': 'billing_invoiceline',
                    },
                ),
                migrations.CreateModel(
                    name='InvoiceLineEntry',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('entry_position', models.BigIntegerField()),
                        ('transfer_id', models.CharField(max_length=220)),
                        ('amount_micros', models.BigIntegerField()),
                        ('line', models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, related_name='entries', to='invoicing.invoiceline')),
                    ],
                    options={
                        'db_table': 'billing_invoicelineentry',
                    },
                ),
                migrations.CreateModel(
                    name='ProviderStatement',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('key', models.CharField(max_length=240, unique=True)),
                        ('currency', models.CharField(max_length=3)),
                        ('period_start', models.DateTimeField()),
                        ('period_end', models.DateTimeField()),
                        ('gpu_seconds', models.BigIntegerField(default=0)),
                        ('gross_micros', models.BigIntegerField(default=0)),
                        ('fee_micros', models.BigIntegerField(default=0)),
                        ('net_payable_micros', models.BigIntegerField(default=0)),
                        ('payouts_micros', models.BigIntegerField(default=0)),
                        ('closing_balance_micros', models.BigIntegerField(default=0)),
                        ('document', models.JSONField()),
                        ('generated_at', models.DateTimeField()),
                        ('organization', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='core.organization')),
                    ],
                    options={
                        'db_table': 'billing_providerstatement',
                    },
                ),
                migrations.CreateModel(
                    name='UsageAccrual',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('period', models.DateField()),
                        ('currency', models.CharField(max_length=3)),
                        ('transfer_id', models.CharField(blank=True, default='', max_length=220)),
                        ('product', models.CharField(max_length=16)),
                        ('usage_type', models.CharField(max_length=64)),
                        ('subject', models.CharField(blank=True, default='', max_length=200)),
                        ('model', models.CharField(blank=True, default='', max_length=200)),
                        ('training_type', models.CharField(blank=True, default='', max_length=32)),
                        ('gpu_model', models.CharField(blank=True, default='', max_length=100)),
                        ('region', models.CharField(blank=True, default='', max_length=64)),
                        ('node', models.CharField(blank=True, default='', max_length=200)),
                        ('provider_id', models.BigIntegerField(blank=True, null=True)),
                        ('rate_micros', models.BigIntegerField()),
                        ('rate_unit', models.BigIntegerField()),
                        ('fee_bps', models.IntegerField(default=0)),
                        ('events', models.IntegerField()),
                        ('quantity', models.BigIntegerField()),
                        ('amount_micros', models.BigIntegerField()),
                        ('provider_micros', models.BigIntegerField(default=0)),
                        ('fee_micros', models.BigIntegerField(default=0)),
                        ('first_usage_id', models.BigIntegerField()),
                        ('batch_position', models.BigIntegerField()),
                        ('buyer', models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='core.organization')),
                    ],
                    options={
                        'db_table': 'billing_usageaccrual',
                    },
                ),
                migrations.AddIndex(
                    model_name='invoice',
                    index=models.Index(fields=['organization', 'period_start'], name='invoice_org_period'),
                ),
                migrations.AddIndex(
                    model_name='invoice',
                    index=models.Index(fields=['status', 'due_at'], name='invoice_status_due'),
                ),
                migrations.AddConstraint(
                    model_name='invoice',
                    constraint=models.UniqueConstraint(condition=models.Q(('number__isnull', False)), fields=('issuer', 'number'), name='invoice_number_unique_per_issuer'),
                ),
                migrations.AddConstraint(
                    model_name='invoice',
                    constraint=models.CheckConstraint(condition=models.Q(('status', 'draft'), ('number__isnull', False), _connector='OR'), name='invoice_final_has_number'),
                ),
                migrations.AddConstraint(
                    model_name='invoice',
                    constraint=models.CheckConstraint(condition=models.Q(('status__in', ['draft', 'open', 'past_due', 'paid', 'void', 'uncollectible'])), name='invoice_status_valid'),
                ),
                migrations.AddConstraint(
                    model_name='creditnote',
                    constraint=models.UniqueConstraint(fields=('issuer', 'number'), name='credit_note_number_unique'),
                ),
                migrations.AddConstraint(
                    model_name='creditnote',
                    constraint=models.CheckConstraint(condition=models.Q(('total_micros__gt', 0)), name='credit_note_positive'),
                ),
                migrations.AddConstraint(
                    model_name='invoiceline',
                    constraint=models.UniqueConstraint(fields=('invoice', 'ordinal'), name='invoice_line_ordinal'),
                ),
                migrations.AddIndex(
                    model_name='invoicelineentry',
                    index=models.Index(fields=['entry_position'], name='invoice_line_entry_pos'),
                ),
                migrations.AddIndex(
                    model_name='usageaccrual',
                    index=models.Index(fields=['period', 'buyer'], name='usage_accrual_period_buyer'),
                ),
                migrations.AddIndex(
                    model_name='usageaccrual',
                    index=models.Index(fields=['transfer_id'], name='usage_accrual_transfer'),
                ),
            ],
            database_operations=[],
        ),
    ]
