"""The default price book (billing.pricing.DEFAULT_BOOK) as its first versions, in the
ledger currency the installation was configured with."""

from datetime import UTC, datetime

from django.conf import settings
from django.db import migrations

SEEDED_FROM = datetime(2020, 1, 1, tzinfo=UTC)


def seed(apps, schema_editor):
    from pricing.book import DEFAULT_BOOK

    Price = apps.get_model("billing", "Price")
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
                reason="default price book",
                created_by="migration",
                created_at=now,
            )
            for (item, tier, variant), value in DEFAULT_BOOK.items()
        ],
        ignore_conflicts=True,
    )


def unseed(apps, schema_editor):
    apps.get_model("billing", "Price").objects.filter(created_by="migration").delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_pricebook_invoices")]

    operations = [migrations.RunPython(seed, unseed)]
