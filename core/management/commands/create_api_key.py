from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core import services
from core.errors import ApplicationError
from core.models import Membership, Organization


class Command(BaseCommand):
    help = (
        "Create an API key for an organization. The key is printed once, alone on the "
        "last line (so `| tail -n 1` captures it), and is not stored anywhere readable."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="the organization's name")
        # admin by default: this is how an operator hands an organization its first key.
        parser.add_argument("--role", default="admin", choices=Membership.Role.values)
        parser.add_argument("--name", default="default", help="a label for the key")

    def handle(self, *args: Any, org: str, role: str, name: str, **options: Any) -> None:
        organization = Organization.objects.filter(name=org).first()
        if organization is None:
            raise CommandError(f"no organization named {org!r} (create it with create_org)")
        try:
            created = services.api_key_create(organization=organization, name=name, role=role)
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"created {role} API key {created.api_key.name!r} (id {created.api_key.pk}, "
            f"prefix {created.api_key.prefix}) for {organization.name!r}; "
            "it is shown once, below:"
        )
        self.stdout.write(created.raw_key)
