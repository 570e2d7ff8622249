"""The ledger models, moved here from billing with their tables (``Meta.db_table`` keeps
the ``billing_`` names): state only, no data moves. On a new database billing's
migrations create the tables; this one gives their state to this app."""

import django.db.models.deletion

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
                    name='Account',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('kind', models.CharField(choices=[('credit', 'Credit'), ('receivable', 'Receivable'), ('payable', 'Payable'), ('revenue', 'Revenue'), ('fees', 'Fees'), ('stripe_clearing', 'Stripe Clearing'), ('promo', 'Promo'), ('rounding', 'Rounding'), ('tax_payable', 'Tax Payable'), ('adjustments', 'Adjustments'), ('cost_of_revenue', 'Cost Of Revenue')], max_length=32)),
                        ('currency', models.CharField(max_length=3)),
                        ('normal_side', models.CharField(choices=[('D', 'Debit'), ('C', 'Credit')], max_length=1)),
                        ('overdraft_limit_micros', models.BigIntegerField(blank=True, null=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('organization', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='accounts', to='core.organization')),
                    ],
                    options={
                        'db_table': 'billing_account',
                    },
                ),
                migrations.CreateModel(
                    name='Hold',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('hold_id', models.CharField(max_length=200, unique=True)),
                        ('currency', models.CharField(max_length=3)),
                        ('amount_micros', models.BigIntegerField()),
                        ('posted_micros', models.BigIntegerField(default=0)),
                        ('state', models.CharField(choices=[('pending', 'Pending'), ('posted', 'Posted'), ('voided', 'Voided'), ('expired', 'Expired')], default='pending', max_length=16)),
                        ('expires_at', models.DateTimeField()),
                        ('created_at', models.DateTimeField()),
                        ('resolved_at', models.DateTimeField(blank=True, null=True)),
                        ('credit_account', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.account')),
                        ('debit_account', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.account')),
                    ],
                    options={
                        'db_table': 'billing_hold',
                    },
                ),
                migrations.CreateModel(
                    name='Posting',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('currency', models.CharField(max_length=3)),
                        ('side', models.CharField(choices=[('D', 'Debit'), ('C', 'Credit')], max_length=1)),
                        ('amount_micros', models.BigIntegerField()),
                        ('recorded_at', models.DateTimeField()),
                        ('account', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='postings', to='ledger.account')),
                        ('entry', models.ForeignKey(db_column='entry_position', db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='core.event')),
                    ],
                    options={
                        'db_table': 'billing_posting',
                    },
                ),
                migrations.CreateModel(
                    name='Balance',
                    fields=[
                        ('account', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, primary_key=True, serialize=False, to='ledger.account')),
                        ('debits_posted', models.BigIntegerField(default=0)),
                        ('credits_posted', models.BigIntegerField(default=0)),
                        ('debits_pending', models.BigIntegerField(default=0)),
                        ('credits_pending', models.BigIntegerField(default=0)),
                        ('position', models.BigIntegerField(default=0)),
                    ],
                    options={
                        'db_table': 'billing_balance',
                        'constraints': [models.CheckConstraint(condition=models.Q(('debits_posted__gte', 0), ('credits_posted__gte', 0), ('debits_pending__gte', 0), ('credits_pending__gte', 0)), name='balance_counters_non_negative')],
                    },
                ),
                migrations.AddConstraint(
                    model_name='account',
                    constraint=models.UniqueConstraint(condition=models.Q(('organization__isnull', False)), fields=('organization', 'kind', 'currency'), name='account_unique_per_org_kind_currency'),
                ),
                migrations.AddConstraint(
                    model_name='account',
                    constraint=models.UniqueConstraint(condition=models.Q(('organization__isnull', True)), fields=('kind', 'currency'), name='account_unique_platform_kind_currency'),
                ),
                migrations.AddConstraint(
                    model_name='account',
                    constraint=models.CheckConstraint(condition=models.Q(('overdraft_limit_micros__isnull', True), ('overdraft_limit_micros__gte', 0), _connector='OR'), name='account_overdraft_limit_non_negative'),
                ),
                migrations.AddConstraint(
                    model_name='account',
                    constraint=models.CheckConstraint(condition=models.Q(('normal_side__in', ['D', 'C'])), name='account_normal_side_valid'),
                ),
                migrations.AddIndex(
                    model_name='hold',
                    index=models.Index(condition=models.Q(('state', 'pending')), fields=['expires_at'], name='hold_pending_expiry'),
                ),
                migrations.AddConstraint(
                    model_name='hold',
                    constraint=models.CheckConstraint(condition=models.Q(('amount_micros__gt', 0)), name='hold_amount_positive'),
                ),
                migrations.AddConstraint(
                    model_name='hold',
                    constraint=models.CheckConstraint(condition=models.Q(('posted_micros__gte', 0), ('posted_micros__lte', models.F('amount_micros'))), name='hold_posted_within_amount'),
                ),
                migrations.AddConstraint(
                    model_name='hold',
                    constraint=models.CheckConstraint(condition=models.Q(('state__in', ['pending', 'posted', 'voided', 'expired'])), name='hold_state_valid'),
                ),
                migrations.AddIndex(
                    model_name='posting',
                    index=models.Index(fields=['account', 'recorded_at'], name='posting_account_time'),
                ),
                migrations.AddConstraint(
                    model_name='posting',
                    constraint=models.CheckConstraint(condition=models.Q(('amount_micros__gt', 0)), name='posting_amount_positive'),
                ),
                migrations.AddConstraint(
                    model_name='posting',
                    constraint=models.CheckConstraint(condition=models.Q(('side__in', ['D', 'C'])), name='posting_side_valid'),
                ),
            ],
            database_operations=[],
        ),
    ]
