from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"

    def ready(self) -> None:
        from django.urls import register_converter

        from core.converters import DatabaseIdConverter, bound_integer_fields

        # Before any serializer or urls.py is loaded: body integers and path ids
        # (<id:...>) bounded to what a bigint column holds.
        bound_integer_fields()
        register_converter(DatabaseIdConverter, "id")

        from core import schema  # noqa: F401  (registers the OpenAPI extensions)
