"""The node protocol's routes, mounted under /api/v1/agent/ beside providers.agent_urls
(providers sits below marketplace and cannot import it, so config/urls.py mounts both)."""

from __future__ import annotations

from django.urls import path

from marketplace.assignments import agent_apis as apis

urlpatterns = [
    path(
        "nodes/<id:node_id>/assignments",
        apis.NodeAssignmentsApi.as_view(),
        name="agent-node-assignments",
    ),
    path(
        "nodes/<id:node_id>/assignments/<id:assignment_id>/claim",
        apis.NodeAssignmentClaimApi.as_view(),
        name="agent-node-assignment-claim",
    ),
    path(
        "nodes/<id:node_id>/runs/<id:assignment_id>/events",
        apis.NodeRunEventsApi.as_view(),
        name="agent-node-run-events",
    ),
    path(
        "nodes/<id:node_id>/runs/<id:assignment_id>/uploads",
        apis.NodeRunUploadsApi.as_view(),
        name="agent-node-run-uploads",
    ),
    path(
        "nodes/<id:node_id>/runs/<id:assignment_id>/uploads/<id:upload_id>/commit",
        apis.NodeRunUploadCommitApi.as_view(),
        name="agent-node-run-upload-commit",
    ),
    path("blob", apis.BlobApi.as_view(), name="agent-blob"),
]
