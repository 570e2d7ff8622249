from django.apps import AppConfig


class WorkloadsConfig(AppConfig):
    name = "marketplace.workloads"
    label = "workloads"
    verbose_name = "Workloads (files, fine-tunes, inference)"

    def ready(self) -> None:
        # Registers the follower that turns lease and training events into job state,
        # and the actors (a batch's runner is sent by name).
        from marketplace.workloads import followers, tasks  # noqa: F401
