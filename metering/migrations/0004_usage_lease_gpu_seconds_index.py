"""An index of lease rows alone (subject_id, quantity, occurred_at): a lease's
GPU-seconds so far and their latest time, read from the index when a batch's
GPU-seconds are held to the lease's bound (gpu_count x its live seconds)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0003_usage_buyer_index_covered"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="usageevent",
            index=models.Index(
                condition=models.Q(("subject_kind", "lease")),
                fields=["subject_id", "quantity", "occurred_at"],
                name="usage_lease_gpu_seconds",
            ),
        ),
    ]
