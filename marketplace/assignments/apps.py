from django.apps import AppConfig


class AssignmentsConfig(AppConfig):
    """Its own app label (as marketplace.workloads has) so its migrations form their own
    chain: the marketplace's and the workloads' chains change often, and a table
    added here never has to be ordered among theirs."""

    name = "marketplace.assignments"
    label = "assignments"
    verbose_name = "Assignments (leased work on nodes)"
