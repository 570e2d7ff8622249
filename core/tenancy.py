"""Who is calling: the organization and role every query is scoped to."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from core.models import Organization


@dataclass(frozen=True, slots=True)
class Caller:
    organization: Organization
    role: str  # Membership.Role value
    api_key_id: int | None = None
    user_id: int | None = None
    # ApiKey.Scope value: "org" (sessions too), or "agent" for a node agent's key,
    # which reaches only the agent API. The node an agent key is bound to is not
    # carried here: it lives in providers (AgentKey.node), which core may not import,
    # and it changes within a request (the first registration binds it), so
    # providers.permissions.agent_node_or_404 reads it where a node is named.
    scope: str = "org"

    @property
    def is_agent(self) -> bool:
        return self.scope == "agent"

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
