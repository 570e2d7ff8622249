from __future__ import annotations

from django.apps import AppConfig


class PricingConfig(AppConfig):
    """The price book and its schedule, quotes and estimates, rating of usage."""

    name = "pricing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the rating and welcome-credit followers, so `manage.py run_follower`
        # runs them.
        from pricing import rating, welcome  # noqa: F401
