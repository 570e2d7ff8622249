"""Work handed to the broker's workers by actor name, after the transaction commits.

An app's ``tasks`` module declares its actors and imports its services (an actor takes
ids, loads, calls a service). A service that hands work on sends by the actor's name,
so services never import their tasks module and no app holds an import cycle; the
name is declared once, in the services module, and the actor takes it from there
(``@dramatiq.actor(actor_name=…)``). Every app's ``ready()`` imports its tasks, so the
actor is declared in every process that could send to it."""

from __future__ import annotations

import dramatiq
from django.db import transaction


def task_send_on_commit(actor_name: str, *args: object) -> None:
    """Send ``actor_name(*args)`` once the current transaction commits (at once when
    there is none); nothing is sent if it rolls back."""

    def send() -> None:
        dramatiq.get_broker().get_actor(actor_name).send(*args)

    transaction.on_commit(send)
