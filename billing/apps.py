from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        # Registers the rating follower, so `manage.py run_follower` runs it.
        from billing import rating  # noqa: F401
        from billing.credit import BillingCredit
        from core import ports

        ports.register("credit", BillingCredit())
