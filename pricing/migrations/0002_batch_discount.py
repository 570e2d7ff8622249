"""The batch discount joins the price book: an item ``batch_discount`` (basis points
off the inference rate for a batch's tokens, per size tier), seeded with the default
book's values in the installation's ledger currency."""

from datetime import UTC, datetime

from django.conf import settings
from django.db import migrations, models

SEEDED_FROM = datetime(2020, 1, 1, tzinfo=UTC)


def seed(apps, schema_editor):
    from pricing.book import DEFAULT_BOOK

    Price = apps.get_model("pricing", "Price")
    now = datetime.now(UTC)
    Price.objects.bulk_create(
        [
            Price(
                item=item,
                tier=tier,
                variant=variant,
                currency=settings.TANDEM_CURRENCY,
                value=value,
                effective_from=SEEDED_FROM,
                public=True,
                reason="default price book: batch discount",
                created_by="migration",
                created_at=now,
            )
            for (item, tier, variant), value in DEFAULT_BOOK.items()
            if item == "batch_discount"
        ],
        ignore_conflicts=True,
    )


def unseed(apps, schema_editor):
    apps.get_model("pricing", "Price").objects.filter(
        item="batch_discount", created_by="migration"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("pricing", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="price",
            name="item",
            field=models.CharField(
                choices=[
                    ("fine_tune", "Fine Tune"),
                    ("inference", "Inference"),
                    ("batch_discount", "Batch Discount"),
                    ("gpu_lease_fee", "Gpu Lease Fee"),
                    ("fine_tune_minimum", "Fine Tune Minimum"),
                    ("welcome_credit", "Welcome Credit"),
                    ("welcome_credit_days", "Welcome Credit Days"),
                ],
                max_length=32,
            ),
        ),
        migrations.RunPython(seed, unseed),
    ]
