from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core import services
from core.errors import ApplicationError
from core.models import Organization


class Command(BaseCommand):
    help = "Create an organization (a tenant)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--kind", required=True, choices=Organization.Kind.values)
        parser.add_argument(
            "--operator",
            action="store_true",
            help="the organization that runs this installation (at most one)",
        )

    def handle(self, *args: Any, name: str, kind: str, operator: bool, **options: Any) -> None:
        try:
            org = services.org_create(name=name, kind=kind, is_operator=operator)
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        role = ", operator" if org.is_operator else ""
        self.stdout.write(f"created organization {org.name!r} (id {org.pk}, {org.kind}{role})")
