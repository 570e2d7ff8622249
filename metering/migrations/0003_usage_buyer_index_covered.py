"""The usage table's index on buyer alone goes: usage_buyer_time (buyer, occurred_at)
leads with the same column, and every insert kept both up. Dropped in place (no
table copy on SQLite, which would lose the append-only triggers)."""

import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import index_dropped


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0004_drop_redundant_indexes"),
        ("metering", "0002_usage_append_only"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="usageevent",
                    name="buyer",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="core.organization",
                    ),
                )
            ],
            database_operations=[index_dropped("metering", "UsageEvent", "buyer")],
        )
    ]
