"""Who may use the provider portal and the agent API.

The portal (/api/v1/provider/...) is for provider organizations' organization keys
and sessions: any role reads (admin, member, finance), writes need the admin role.
The agent API (/api/v1/agent/...) is for agent keys only (core.models.ApiKey.Scope
.AGENT), each bound to one node: every agent endpoint that names a node calls
``agent_node_or_404``, so a key reaches its own node and no other.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from core.errors import Forbidden, NotFound
from providers import selectors
from providers.models import Node

AGENT_ONLY_MESSAGE = (
    "the agent API takes agent keys only; create one with POST /api/v1/provider/agent-keys/"
)


def _provider_caller(request: Request) -> Any:
    caller = getattr(request, "caller", None)
    return caller if caller is not None and caller.organization.is_provider else None


class IsProviderMember(BasePermission):
    """Any role of a provider organization: reads."""

    message = "this needs a provider organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        return _provider_caller(request) is not None


class IsProviderAdmin(BasePermission):
    """Writes to the portal: sites, offers, agent keys, payout accounts."""

    message = "this needs the admin role in a provider organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = _provider_caller(request)
        return caller is not None and caller.role == "admin"


def is_agent_caller(caller: Any) -> bool:
    """An agent key of a provider organization."""
    return caller is not None and caller.is_agent and caller.organization.is_provider


class IsAgentKey(BasePermission):
    """The agent API: agent keys only (core.authentication keeps agent keys out of
    every view whose permission classes do not admit them)."""

    admits_agent_keys = True
    message = AGENT_ONLY_MESSAGE

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_agent_caller(getattr(request, "caller", None))


class AgentNodes:
    """core.tenancy's ``agent_nodes`` port (registered in ProvidersConfig.ready): the
    node an agent key is bound to, for Caller.agent_node_id."""

    def node_of(self, *, api_key_id: int) -> int | None:
        return selectors.agent_key_node_id(api_key_id=api_key_id)


def agent_node_id_or_404(caller: Any, node_id: int) -> int:
    """The check of ``agent_node_or_404`` without loading the node: the heartbeat's
    (one prepared statement; every node calls it every few seconds)."""
    if not is_agent_caller(caller):
        raise Forbidden(AGENT_ONLY_MESSAGE)
    if selectors.agent_key_node_id(api_key_id=caller.api_key_id) != node_id:
        raise NotFound(f"node {node_id} is not this agent key's node", details={"node_id": node_id})
    return node_id


def agent_node_or_404(caller: Any, node_id: int) -> Node:
    """The node an agent endpoint names, if it is the caller's own: the node the agent
    key is bound to (AgentKey.node, set by its first registration). Another node, an
    unbound key or an unknown id: 404 (nothing is said about other nodes). A caller
    that is not an agent key: 403.

    Every agent endpoint under /api/v1/agent/nodes/<id>/... calls this (or, where the
    node itself is not needed, ``agent_node_id_or_404``) before it reads or writes
    anything."""
    agent_node_id_or_404(caller, node_id)
    node = Node.objects.filter(pk=node_id, organization_id=caller.organization.pk).first()
    if node is None:
        raise NotFound(f"node {node_id} is not this agent key's node", details={"node_id": node_id})
    return node
