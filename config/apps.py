from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project itself: management commands that span apps (``demo``), and the
    in-process broker's workers for the embedded default's serving processes."""

    name = "config"
    label = "project"

    def ready(self) -> None:
        from config import broker

        broker.start_inprocess_worker_if_configured()
