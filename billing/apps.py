from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        # Registers the rating follower, so `manage.py run_follower` runs it.
        # The accrual and welcome-credit followers, and the price book's port.
        from billing import (  # noqa: F401
            accrual,
            pricebook,
            rating,
        )
        from billing.exports import tasks as _export_tasks  # noqa: F401  (the export actor)
        from core import ports as _ports

        _ports.register("pricebook", pricebook.PriceBookPort())
        from billing.credit import BillingCredit
        from core import ports

        ports.register("credit", BillingCredit())
