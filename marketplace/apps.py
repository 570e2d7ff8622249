from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"

    def ready(self) -> None:
        # Registers the supply follower, so `run_follower` and `run_matching` run it.
        from marketplace import followers  # noqa: F401
