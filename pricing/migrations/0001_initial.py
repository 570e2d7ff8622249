"""The pricing models, moved here from billing with their tables (``Meta.db_table`` keeps
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
                    name='Price',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('item', models.CharField(choices=[('fine_tune', 'Fine Tune'), ('inference', 'Inference'), ('gpu_lease_fee', 'Gpu Lease Fee'), ('fine_tune_minimum', 'Fine Tune Minimum'), ('welcome_credit', 'Welcome Credit'), ('welcome_credit_days', 'Welcome Credit Days')], max_length=32)),
                        ('tier', models.CharField(blank=True, default='', max_length=32)),
                        ('variant', models.CharField(blank=True, default='', max_length=32)),
                        ('currency', models.CharField(max_length=3)),
                        ('value', models.BigIntegerField()),
                        ('effective_from', models.DateTimeField()),
                        ('public', models.BooleanField(default=True)),
                        ('reason', models.CharField(blank=True, default='', max_length=500)),
                        ('created_by', models.CharField(default='system', max_length=200)),
                        ('created_at', models.DateTimeField()),
                    ],
                    options={
                        'db_table': 'billing_price',
                        'constraints': [models.UniqueConstraint(fields=('item', 'tier', 'variant', 'currency', 'effective_from'), name='price_version_unique'), models.CheckConstraint(condition=models.Q(('value__gte', 0)), name='price_value_non_negative')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
