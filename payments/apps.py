from __future__ import annotations

from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    """Stripe payments: top-ups, webhooks, refunds, disputes, payouts."""

    name = "payments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the auto-recharge and invoice-collection followers, so
        # `manage.py run_follower` runs them.
        from payments import collection, recharge, tasks  # noqa: F401
