"""The provider portal API (/api/v1/provider/...) and the agent API (/api/v1/agent/...).

One view per operation: parse input, check permission, call one selector or service,
serialize output. Every query is scoped to ``request.caller.organization``: another
organization's sites, nodes and offers are 404s, never 403s, so ids leak nothing.

Earnings are not here yet: they live in the ledger (the provider's payable account),
and providers may import only core. They will be exposed once billing publishes
provider statements as events (or core grows a read port for them).

One module per area: ``sites``, ``nodes`` (with their telemetry and reliability),
``offers``, ``overview`` (utilization, the provider's reliability, the GPU catalog),
``agent_keys``; the agent's own: ``registration`` and ``heartbeats``. What they share
is in ``common``.
"""
