from __future__ import annotations

from django.apps import AppConfig


class PricingConfig(AppConfig):
    """The price book and its schedule, quotes and estimates, rating of usage."""

    name = "pricing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the rating and welcome-credit followers, so `manage.py run_follower`
        # runs them, and the price book's and the credit's ports.
        from core import ports
        from pricing import rating, welcome  # noqa: F401
        from pricing.lease_holds import BillingCredit
        from pricing.quotes import PriceBookPort

        ports.register("pricebook", PriceBookPort())
        ports.register("credit", BillingCredit())
