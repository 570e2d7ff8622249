from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"

    def ready(self) -> None:
        from config import broker
        from core import schema  # noqa: F401  (registers the OpenAPI extensions)

        broker.start_inprocess_worker_if_configured()
