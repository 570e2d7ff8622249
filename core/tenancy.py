"""Who is calling: the organization and role every query is scoped to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from core import ports
from core.models import Organization


class AgentNodes(Protocol):
    """A port registered by providers: the node an agent key is bound
    to (declared here, beside its one consumer, Caller.agent_node_id)."""

    def node_of(self, *, api_key_id: int) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Caller:
    organization: Organization
    role: str  # Membership.Role value
    api_key_id: int | None = None
    user_id: int | None = None
    # ApiKey.Scope value: "org" (sessions too), or "agent" for a node agent's key,
    # which reaches only the agent API.
    scope: str = "org"

    @property
    def is_agent(self) -> bool:
        return self.scope == "agent"

    @property
    def agent_node_id(self) -> int | None:
        """The node an agent key is bound to; None for organization keys and sessions,
        and for an agent key that has not registered its node yet (it reaches no node).

        Read when asked, not when the key is authenticated: the binding lives in
        providers (AgentKey.node), which core may not import, so providers answers
        through the ``agent_nodes`` port; most agent requests (heartbeats) never ask,
        and a registration binds the key within the request, after authentication.
        Endpoints that name a node use providers.permissions.agent_node_or_404, which
        checks the binding and finds the node in one query."""
        if not self.is_agent or self.api_key_id is None:
            return None
        agent_nodes = ports.get(AgentNodes)
        return agent_nodes.node_of(api_key_id=self.api_key_id)

    @property
    def is_finance(self) -> bool:
        return self.role in ("finance", "admin")

    @property
    def is_platform_finance(self) -> bool:
        """Finance staff of the operator organization: may read platform-wide books."""
        return self.organization.is_operator and self.role in ("finance", "admin")

    @property
    def rate_limit_key(self) -> str:
        if self.api_key_id is not None:
            return f"key:{self.api_key_id}"
        return f"user:{self.user_id}"


def get_caller(request: Request) -> Caller:
    caller = getattr(request, "caller", None)
    if caller is None:
        raise NotAuthenticated()
    return caller
