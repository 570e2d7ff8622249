"""Together's platform routes, mounted by config.urls under ``v1/``, ``v2/`` and ``v3/``."""

from __future__ import annotations

from django.urls import path

from core.routing import by_method
from marketplace.together import apis, endpoint_apis

v1 = [
    path(
        "compute/clusters",
        by_method(get=apis.ClusterListApi, post=apis.ClusterCreateApi),
        name="together-clusters",
    ),
    path(
        "compute/clusters/<str:cluster_id>",
        by_method(
            get=apis.ClusterDetailApi, put=apis.ClusterUpdateApi, delete=apis.ClusterDeleteApi
        ),
        name="together-cluster",
    ),
    path("compute/regions", apis.RegionListApi.as_view(), name="together-regions"),
    path("billing/usage", apis.UsageReportApi.as_view(), name="together-billing-usage"),
]

v2 = [
    path(
        "projects/<str:project_id>/models",
        apis.ProjectModelListApi.as_view(),
        name="together-project-models",
    ),
    path(
        "projects/<str:project_id>/models/<str:model_id>",
        apis.ProjectModelDetailApi.as_view(),
        name="together-project-model",
    ),
    path(
        "supported-models", apis.SupportedModelListApi.as_view(), name="together-supported-models"
    ),
    # Dedicated endpoints (marketplace/together/endpoints.py).
    path(
        "public/inference-instance-types",
        endpoint_apis.InstanceTypeListApi.as_view(),
        name="together-instance-types",
    ),
    path(
        "public/inference-instance-types/<str:type_id>",
        endpoint_apis.InstanceTypeDetailApi.as_view(),
        name="together-instance-type",
    ),
    path(
        "projects/<str:project_id>/endpoints",
        by_method(get=endpoint_apis.EndpointListApi, post=endpoint_apis.EndpointCreateApi),
        name="together-endpoints",
    ),
    path(
        "projects/<str:project_id>/endpoints/<str:endpoint_id>",
        by_method(
            get=endpoint_apis.EndpointDetailApi,
            patch=endpoint_apis.EndpointUpdateApi,
            delete=endpoint_apis.EndpointDeleteApi,
        ),
        name="together-endpoint",
    ),
    path(
        "projects/<str:project_id>/endpoints/<str:endpoint_id>/deployments",
        by_method(get=endpoint_apis.DeploymentListApi, post=endpoint_apis.DeploymentCreateApi),
        name="together-endpoint-deployments",
    ),
    path(
        "projects/<str:project_id>/endpoints/<str:endpoint_id>/deployments/<str:deployment_id>",
        by_method(
            get=endpoint_apis.DeploymentDetailApi,
            patch=endpoint_apis.DeploymentUpdateApi,
            delete=endpoint_apis.DeploymentDeleteApi,
        ),
        name="together-endpoint-deployment",
    ),
]

v3 = [path("whoami", apis.WhoamiApi.as_view(), name="together-whoami")]
