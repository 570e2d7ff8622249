"""The price book's table: one row per price version, in force from its
``effective_at``. The table keeps its ``billing_`` name (``Meta.db_table``)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

# --- price book, invoices, statements ------------------------------------------
#
# Prices are versions: a change is a new row with a later ``effective_from``, never an
# edit, so usage is always rated at the price in force when it happened.
# Invoices, their lines and the lines' links to journal entries are written by
# billing.invoicing; an open (finalized) invoice is frozen: its ``document`` is the
# rendering every format is made from, and its hash is on the InvoiceFinalized event.


class Price(models.Model):
    class Item(models.TextChoices):
        FINE_TUNE = "fine_tune"  # µ per 1M training or evaluation tokens; tier, variant
        INFERENCE = "inference"  # µ per 1M tokens; tier, variant prompt|completion
        # basis points off the inference rate for a batch's tokens; tier
        BATCH_DISCOUNT = "batch_discount"
        GPU_LEASE_FEE = "gpu_lease_fee"  # basis points on top of the lease price
        FINE_TUNE_MINIMUM = "fine_tune_minimum"  # µ per fine-tune job
        WELCOME_CREDIT = "welcome_credit"  # µ granted to a new buyer organization
        WELCOME_CREDIT_DAYS = "welcome_credit_days"  # days before unused credit expires

    item = models.CharField(max_length=32, choices=Item.choices)
    tier = models.CharField(max_length=32, blank=True, default="")
    variant = models.CharField(max_length=32, blank=True, default="")
    currency = models.CharField(max_length=3)
    value = models.BigIntegerField()
    effective_from = models.DateTimeField()
    public = models.BooleanField(default=True)
    reason = models.CharField(max_length=500, blank=True, default="")
    created_by = models.CharField(max_length=200, default="system")
    created_at = models.DateTimeField()

    class Meta:
        db_table = "billing_price"
        constraints = [
            models.UniqueConstraint(
                fields=["item", "tier", "variant", "currency", "effective_from"],
                name="price_version_unique",
            ),
            models.CheckConstraint(condition=Q(value__gte=0), name="price_value_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.item}/{self.tier}/{self.variant} {self.value} from {self.effective_from}"
