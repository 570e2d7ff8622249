"""The node agent's API: /api/v1/agent/..."""

from __future__ import annotations

from django.urls import path

from providers import apis

urlpatterns = [
    path("nodes/register", apis.NodeRegisterApi.as_view(), name="agent-node-register"),
    path(
        "nodes/<id:node_id>/heartbeat",
        apis.node_heartbeat,
        name="agent-node-heartbeat",
    ),
]
