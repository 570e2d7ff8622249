"""The node agent's API: /api/v1/agent/..."""

from __future__ import annotations

from django.urls import path

from providers.apis import heartbeats, registration

urlpatterns = [
    path("nodes/register", registration.NodeRegisterApi.as_view(), name="agent-node-register"),
    path(
        "nodes/<id:node_id>/heartbeat",
        heartbeats.node_heartbeat,
        name="agent-node-heartbeat",
    ),
]
