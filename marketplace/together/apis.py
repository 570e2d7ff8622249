"""Together's platform routes: ``/v3/whoami``, ``/v2/projects/{id}/models``,
``/v2/supported-models``, ``/v1/compute/clusters``, ``/v1/compute/regions``,
``/v1/billing/usage``. One view per operation, errors in OpenAI's shape (which
Together's client reads), buyers' keys as on the rest of ``/v1/``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.idempotency import idempotent
from core.schema import openai_error_responses
from core.tenancy import get_caller
from marketplace.together import clusters, projects, shapes, usage
from marketplace.workloads import inputs
from marketplace.workloads.apis import V1Api
from marketplace.workloads.errors import invalid
from pricing.selectors import price_at, size_tier

# --- serializers (what the schema declares; the clients' own shapes) ---------------


class _Named(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()


class _Project(_Named):
    slug = serializers.CharField()


class _ApiKeyId(serializers.Serializer):
    id = serializers.CharField()


class WhoamiSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["project_api_key"])
    api_key = _ApiKeyId()
    organization = _Named()
    project = _Project()


class ProjectModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField(help_text="<project slug>/<model name>")
    organizationId = serializers.CharField()
    projectId = serializers.CharField()
    visibility = serializers.CharField()
    weights = serializers.DictField()


class ProjectModelPageSerializer(serializers.Serializer):
    data = ProjectModelSerializer(many=True)  # type: ignore[assignment]  # the field, not Serializer.data
    next_cursor = serializers.CharField(allow_null=True)


class SupportedModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    displayName = serializers.CharField()
    contextLength = serializers.CharField()
    pricing = serializers.DictField(help_text="USD per 1M tokens: input, output")


class SupportedModelPageSerializer(serializers.Serializer):
    data = SupportedModelSerializer(many=True)  # type: ignore[assignment]  # the field, not Serializer.data
    next_cursor = serializers.CharField(allow_null=True)


class WorkerNodeSerializer(serializers.Serializer):
    node_id = serializers.CharField()
    host_name = serializers.CharField()
    num_gpus = serializers.IntegerField()
    status = serializers.CharField()
    lease_id = serializers.IntegerField()
    lease_state = serializers.CharField()


class ClusterSerializer(serializers.Serializer):
    cluster_id = serializers.CharField()
    cluster_name = serializers.CharField()
    billing_type = serializers.CharField()
    gpu_type = serializers.CharField()
    num_gpus = serializers.IntegerField()
    region = serializers.CharField(allow_blank=True)
    project_id = serializers.CharField()
    status = serializers.CharField(
        help_text="WaitingForDataPlaneNodes | Ready | Degraded | Deleting"
    )
    gpu_worker_nodes = WorkerNodeSerializer(many=True)
    order_id = serializers.IntegerField()
    order_state = serializers.CharField()
    price_per_gpu_hour = serializers.CharField(
        allow_null=True, help_text="the leases' price per GPU-hour (decimal text)"
    )


class ClusterListSerializer(serializers.Serializer):
    clusters = ClusterSerializer(many=True)


class ClusterDeletedSerializer(serializers.Serializer):
    cluster_id = serializers.CharField()


class RegionSerializer(serializers.Serializer):
    name = serializers.CharField()
    supported_instance_types = serializers.ListField(child=serializers.CharField())
    driver_versions = serializers.ListField(child=serializers.DictField())


class RegionListSerializer(serializers.Serializer):
    regions = RegionSerializer(many=True)


class UsageWindowSerializer(serializers.Serializer):
    date = serializers.CharField()
    start_time = serializers.CharField()
    end_time = serializers.CharField()
    line_items = serializers.ListField(child=serializers.DictField())


class UsageReportSerializer(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    organization_id = serializers.CharField()
    billing_period = serializers.CharField()
    currency = serializers.CharField()
    data = UsageWindowSerializer(many=True)  # type: ignore[assignment]  # the field, not Serializer.data
    next_cursor = serializers.CharField(allow_null=True)
    earliest_window_start = serializers.CharField(allow_null=True)
    latest_window_end = serializers.CharField(allow_null=True)


_PAGE = [
    OpenApiParameter("after", str, description="cursor from next_cursor"),
    OpenApiParameter("limit", int, description="1 to 1000"),
]


# --- projects and discovery ----------------------------------------------------------


class WhoamiApi(V1Api):
    @extend_schema(
        operation_id="v3_whoami",
        summary="Who the API key is: its organization, which is its Together project",
        responses={200: WhoamiSerializer, **openai_error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        return Response(shapes.whoami(get_caller(request)))


def _page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """Cursor pages over ids (Together's ``after``/``next_cursor``)."""
    raw_limit = request.query_params.get("limit") or "100"
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise invalid("limit must be a whole number from 1 to 1000", param="limit")
    after = request.query_params.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(raw_limit)
    page = items[:limit]
    return {"data": page, "next_cursor": page[-1]["id"] if len(items) > limit else None}


class ProjectModelListApi(V1Api):
    @extend_schema(
        operation_id="v2_project_models_list",
        summary="A project's own models (its fine-tuned models)",
        parameters=_PAGE,
        responses={
            200: ProjectModelPageSerializer,
            **openai_error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request, project_id: str) -> Response:
        organization = get_caller(request).organization
        projects.project_check(organization=organization, project=project_id)
        models = projects.project_models(organization=organization)
        return Response(_page([shapes.project_model(m, organization) for m in models], request))


class ProjectModelDetailApi(V1Api):
    @extend_schema(
        operation_id="v2_project_model_retrieve",
        summary="One of a project's models",
        responses={200: ProjectModelSerializer, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, project_id: str, model_id: str) -> Response:
        organization = get_caller(request).organization
        projects.project_check(organization=organization, project=project_id)
        model = projects.project_model_get(organization=organization, model_id=model_id)
        return Response(shapes.project_model(model, organization))


class SupportedModelListApi(V1Api):
    @extend_schema(
        operation_id="v2_supported_models_list",
        summary="Base models served and fine-tuned here, with the price book's token prices",
        parameters=_PAGE,
        responses={200: SupportedModelPageSerializer, **openai_error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        now = timezone.now()
        data = []
        for card in projects.supported_models():
            tier = size_tier(card.name)
            prices = {
                variant: price_at("inference", at=now, tier=tier, variant=variant).value
                for variant in ("prompt", "completion")
            }
            data.append(shapes.supported_model(card, prices, now))
        return Response(_page(data, request))


# --- clusters --------------------------------------------------------------------------


class ClusterListApi(V1Api):
    @extend_schema(
        operation_id="v1_compute_clusters_list",
        summary="Live GPU clusters (orders placed as clusters, with their leases)",
        parameters=[
            OpenApiParameter("projectId", str, description="your project id, or omit"),
            OpenApiParameter("project_id", str, description="the same, snake case"),
        ],
        responses={200: ClusterListSerializer, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request) -> Response:
        organization = get_caller(request).organization
        # The client sends ``projectId`` (its alias for ``project_id``).
        asked = request.query_params.get("projectId") or request.query_params.get("project_id")
        if asked:
            projects.project_check(organization=organization, project=asked)
        found = clusters.cluster_list(organization=organization)
        return Response({"clusters": [shapes.cluster(c, organization) for c in found]})


class ClusterCreateApi(V1Api):
    @extend_schema(
        operation_id="v1_compute_clusters_create",
        summary="Create a GPU cluster: a marketplace order for its GPUs",
        request=None,
        responses={
            200: ClusterSerializer,
            **openai_error_responses(400, 401, 402, 403, 404, 409, 422, 429),
        },
    )
    @idempotent(required=False)
    def post(self, request: Request) -> Response:
        organization = get_caller(request).organization
        created = clusters.cluster_create(
            organization=organization, data=inputs.body_object(request.data)
        )
        return Response(shapes.cluster(created, organization))


class ClusterDetailApi(V1Api):
    @extend_schema(
        operation_id="v1_compute_cluster_retrieve",
        summary="One GPU cluster",
        responses={200: ClusterSerializer, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, cluster_id: str) -> Response:
        organization = get_caller(request).organization
        found = clusters.cluster_get(organization=organization, cluster_id=cluster_id)
        return Response(shapes.cluster(found, organization))


class ClusterUpdateApi(V1Api):
    @extend_schema(
        operation_id="v1_compute_cluster_update",
        summary="Update a GPU cluster (409: an order's GPUs and length are fixed)",
        request=None,
        responses={200: ClusterSerializer, **openai_error_responses(400, 401, 403, 404, 409, 429)},
    )
    def put(self, request: Request, cluster_id: str) -> Response:
        organization = get_caller(request).organization
        found = clusters.cluster_get(organization=organization, cluster_id=cluster_id)
        updated = clusters.cluster_update(cluster=found, data=inputs.body_object(request.data))
        return Response(shapes.cluster(updated, organization))


class ClusterDeleteApi(V1Api):
    @extend_schema(
        operation_id="v1_compute_cluster_delete",
        summary="Delete a GPU cluster: its order is cancelled, its leases end billed to now",
        responses={
            200: ClusterDeletedSerializer,
            **openai_error_responses(401, 403, 404, 409, 429),
        },
    )
    def delete(self, request: Request, cluster_id: str) -> Response:
        organization = get_caller(request).organization
        found = clusters.cluster_get(organization=organization, cluster_id=cluster_id)
        deleted = clusters.cluster_delete(cluster=found)
        return Response({"cluster_id": deleted.public_id})


class RegionListApi(V1Api):
    @extend_schema(
        operation_id="v1_compute_regions_list",
        summary="Regions with offers now: GPU types and driver versions of their nodes",
        responses={200: RegionListSerializer, **openai_error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        return Response({"regions": clusters.regions()})


# --- usage -----------------------------------------------------------------------------


class UsageReportApi(V1Api):
    @extend_schema(
        operation_id="v1_billing_usage",
        summary="A month's usage and its cost by day or hour (Together's BillingUsageReport)",
        parameters=[
            *_PAGE,
            OpenApiParameter("month", str, description="YYYY-MM (default: this month)"),
            OpenApiParameter("granularity", str, enum=["day", "hour"]),
            OpenApiParameter("organization_id", str, description="your own, or omit"),
        ],
        responses={200: UsageReportSerializer, **openai_error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        organization = get_caller(request).organization
        params = request.query_params
        own = projects.organization_public_id(organization)
        if params.get("organization_id") and params["organization_id"] != own:
            from core.errors import Forbidden

            raise Forbidden(
                "usage is reported for the API key's own organization only",
                details={"param": "organization_id"},
            )
        report = usage.usage_report(
            organization=organization,
            month=params.get("month"),
            granularity=params.get("granularity"),
            after=params.get("after"),
            limit_raw=params.get("limit"),
            currency=settings.TANDEM_CURRENCY,
            now=timezone.now(),
        )
        return Response(
            {
                "object": "list",
                "organization_id": own,
                "billing_period": report.month,
                "currency": report.currency,
                "data": report.windows,
                "next_cursor": report.next_cursor,
                "earliest_window_start": shapes.iso(report.earliest),
                "latest_window_end": shapes.iso(report.latest),
            }
        )
