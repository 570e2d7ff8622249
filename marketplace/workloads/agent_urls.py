"""The relay's node routes, mounted under /api/v1/agent/ beside the assignments'."""

from __future__ import annotations

from django.urls import path

from marketplace.workloads import relay_apis as apis

urlpatterns = [
    path(
        "nodes/<id:node_id>/serve/<id:assignment_id>/requests",
        apis.ServeRequestsApi.as_view(),
        name="agent-node-serve-requests",
    ),
    path(
        "nodes/<id:node_id>/serve/<id:assignment_id>/replies",
        apis.ServeRepliesApi.as_view(),
        name="agent-node-serve-replies",
    ),
]
