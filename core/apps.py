from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"

    def ready(self) -> None:
        from config import broker

        broker.start_inprocess_worker_if_configured()
