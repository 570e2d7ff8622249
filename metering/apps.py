from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"

    def ready(self) -> None:
        from core import ports
        from metering.ports import MeteringUsage

        ports.register(ports.UsagePort, MeteringUsage())
