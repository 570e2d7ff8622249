"""Agent keys: the API keys a node's agent uses, each bound to one node."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from core import services as core_services
from core.errors import InvalidInput
from core.models import Organization
from providers.models import AgentKey, Node


@dataclass(frozen=True)
class CreatedAgentKey:
    agent_key: AgentKey
    raw_key: str


@transaction.atomic
def agent_key_create(
    *, organization: Organization, name: str, node: Node | None = None
) -> CreatedAgentKey:
    """An API key for one node's agent: scope ``agent`` (it reaches only the agent API,
    for the node its first registration binds it to, or ``node``, one of the
    organization's registered nodes, at once). Role ``member``, which an agent key
    never uses: the scope decides what it may do."""
    if node is not None and node.organization_id != organization.pk:
        raise InvalidInput(f"node {node.pk} is not one of {organization.name}'s nodes")
    created = core_services.api_key_create(
        organization=organization, name=f"agent: {name}"[:100], role="member", scope="agent"
    )
    agent_key = AgentKey.objects.create(
        organization=organization, api_key=created.api_key, name=name, node=node
    )
    return CreatedAgentKey(agent_key=agent_key, raw_key=created.raw_key)
