from django.apps import AppConfig


class WorkloadsConfig(AppConfig):
    name = "marketplace.workloads"
    label = "workloads"
    verbose_name = "Workloads (files, fine-tunes, inference)"

    def ready(self) -> None:
        # Registers the follower that turns lease and training events into job state,
        # and the actors (a batch's runner and the file check are sent by name).
        from marketplace.workloads import (
            followers,  # noqa: F401
            tasks,  # noqa: F401  (the actors, sent by name)
        )
