from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"

    def ready(self) -> None:
        from core import ports
        from marketplace import (
            followers,  # noqa: F401  (registers the supply follower)
            tasks,  # noqa: F401  (the matching actor, sent by name)
        )
        from marketplace.provenance import MarketplaceProvenance

        # Metering proves usage's subjects (leases, jobs, deployments) through this.
        ports.register(ports.UsageProvenancePort, MarketplaceProvenance())
