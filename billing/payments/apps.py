from __future__ import annotations

from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    """Stripe payments: top-ups, webhooks, refunds, disputes, payouts. A nested app
    under billing with its own migrations (billing's tables change on their own)."""

    name = "billing.payments"
    label = "payments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the auto-recharge and invoice-collection followers, so
        # `manage.py run_follower` runs them.
        from billing.payments import collection, recharge  # noqa: F401
