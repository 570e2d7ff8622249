"""Together's dedicated-endpoint routes: ``/v2/public/inference-instance-types``,
``/v2/projects/{project_id}/endpoints…`` and ``…/endpoints/{endpoint_id}/deployments…``.
One view per operation; the project in the path must be the caller's own (else 404,
as any other project's or endpoint's id is)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from core.idempotency import idempotent
from core.models import Organization
from core.schema import openai_error_responses
from core.tenancy import get_caller
from marketplace.together import endpoint_inputs, endpoints, instance_types, projects
from marketplace.together import endpoint_shapes as shapes
from marketplace.workloads import inputs
from marketplace.workloads.apis import V1Api
from marketplace.workloads.errors import invalid
from marketplace.workloads.models import DedicatedEndpoint

_PAGE = [
    OpenApiParameter("after", str, description="cursor from next_cursor"),
    OpenApiParameter("limit", int, description="1 to 100"),
    OpenApiParameter("order_by", str, description="created_at|updated_at [asc|desc]"),
]
_ETAG = [OpenApiParameter("etag", str, description="the version read (stale: 409)")]
_MASK = [OpenApiParameter("update_mask", str, description="fields to update, comma separated")]


def _organization(request: Request, project_id: str) -> Organization:
    organization = get_caller(request).organization
    projects.project_check(organization=organization, project=project_id)
    return organization


def _endpoint(request: Request, project_id: str, endpoint_id: str) -> DedicatedEndpoint:
    return endpoints.endpoint_get(
        organization=_organization(request, project_id), endpoint_id=endpoint_id
    )


def _precondition(request: Request, etag: object) -> endpoints.Precondition:
    if etag is not None and not isinstance(etag, str):
        raise invalid("etag must be a string", param="etag")
    return endpoints.Precondition(
        etag=etag or None, if_match=request.headers.get("If-Match") or None
    )


def _flag(request: Request, name: str, alias: str) -> bool:
    raw = request.query_params.get(alias, request.query_params.get(name, "false")).lower()
    if raw not in ("true", "false"):
        raise invalid(f"{name} must be true or false", param=name)
    return raw == "true"


# --- hardware ----------------------------------------------------------------------------


class InstanceTypeListApi(V1Api):
    @extend_schema(
        operation_id="v2_inference_instance_types_list",
        summary="Hardware for dedicated endpoints: GPU model x count from live offers",
        responses={200: None, **openai_error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        data = [instance_types.instance_type_shape(t) for t in instance_types.instance_types()]
        return Response({"object": "list", "data": data, "next_cursor": None})


class InstanceTypeDetailApi(V1Api):
    @extend_schema(
        operation_id="v2_inference_instance_type_retrieve",
        summary="One hardware instance type",
        responses={200: None, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, type_id: str) -> Response:
        found = instance_types.instance_type_get(type_id)
        return Response(instance_types.instance_type_shape(found))


# --- endpoints ---------------------------------------------------------------------------


class EndpointListApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoints_list",
        summary="The project's dedicated endpoints",
        parameters=_PAGE,
        responses={200: None, **openai_error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, project_id: str) -> Response:
        organization = _organization(request, project_id)
        limit, after, order = endpoint_inputs.page_args(request.query_params)
        rows, cursor = endpoint_inputs.page(
            endpoints.endpoints_of(organization), limit=limit, after=after, order=order
        )
        data = shapes.endpoints_shapes(rows, organization)
        return Response({"data": data, "next_cursor": cursor})


class EndpointCreateApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoints_create",
        summary="Create a dedicated endpoint: a name requests use as model",
        request=None,
        responses={200: None, **openai_error_responses(400, 401, 403, 404, 409, 429)},
    )
    @idempotent(required=False)
    def post(self, request: Request, project_id: str) -> Response:
        organization = _organization(request, project_id)
        created = endpoints.endpoint_create(
            organization=organization, data=inputs.body_object(request.data)
        )
        return Response(shapes.endpoint_shape(created, organization, []))


class EndpointDetailApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoint_retrieve",
        summary="A dedicated endpoint with summaries of its deployments",
        responses={200: None, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, project_id: str, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, project_id, endpoint_id)
        return Response(shapes.endpoints_shapes([endpoint], endpoint.organization)[0])


class EndpointUpdateApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoint_update",
        summary="Rename an endpoint, change its visibility or its traffic split",
        request=None,
        parameters=_MASK,
        responses={200: None, **openai_error_responses(400, 401, 403, 404, 409, 412, 429)},
    )
    def patch(self, request: Request, project_id: str, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, project_id, endpoint_id)
        data = inputs.body_object(request.data)
        updated = endpoints.endpoint_update(
            endpoint=endpoint,
            data=data,
            update_mask=request.query_params.get("update_mask"),
            precondition=_precondition(request, data.get("etag")),
        )
        return Response(shapes.endpoints_shapes([updated], updated.organization)[0])


class EndpointDeleteApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoint_delete",
        summary="Delete an endpoint (its deployments first)",
        parameters=_ETAG,
        responses={200: None, **openai_error_responses(401, 403, 404, 409, 412, 429)},
    )
    def delete(self, request: Request, project_id: str, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, project_id, endpoint_id)
        endpoints.endpoint_delete(
            endpoint=endpoint,
            precondition=_precondition(request, request.query_params.get("etag")),
        )
        return Response({})


# --- deployments -------------------------------------------------------------------------


class DeploymentListApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoint_deployments_list",
        summary="An endpoint's deployments",
        parameters=_PAGE,
        responses={200: None, **openai_error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, project_id: str, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, project_id, endpoint_id)
        limit, after, order = endpoint_inputs.page_args(request.query_params)
        rows, cursor = endpoint_inputs.page(
            endpoints.deployments_of(endpoint), limit=limit, after=after, order=order
        )
        views = shapes.deployment_views(list(endpoints.deployments_of(endpoint).order_by("pk")))
        capacity = shapes.capacity(views, endpoint)
        by_pk = {view.deployment.pk: view for view in views}
        data = [
            shapes.deployment_full(by_pk[row.pk], endpoint, endpoint.organization, capacity)
            for row in rows
        ]
        return Response({"data": data, "next_cursor": cursor})


class DeploymentCreateApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoint_deployments_create",
        summary="Serve a model on an endpoint: minReplicas replicas, each a lease of its own",
        request=None,
        parameters=[OpenApiParameter("validateOnly", bool)],
        responses={200: None, **openai_error_responses(400, 401, 402, 403, 404, 409, 429)},
    )
    @idempotent(required=False)
    def post(self, request: Request, project_id: str, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, project_id, endpoint_id)
        validate_only = _flag(request, "validate_only", "validateOnly")
        created = endpoints.deployment_create(
            endpoint=endpoint, data=inputs.body_object(request.data), validate_only=validate_only
        )
        if created is None:
            return Response({"validated": True})
        return Response(shapes.deployment_shape(created, endpoint, endpoint.organization))


class DeploymentDetailApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoint_deployment_retrieve",
        summary="One deployment, its state and its replicas' leases",
        responses={200: None, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(
        self, request: Request, project_id: str, endpoint_id: str, deployment_id: str
    ) -> Response:
        endpoint = _endpoint(request, project_id, endpoint_id)
        found = endpoints.deployment_get(endpoint=endpoint, deployment_id=deployment_id)
        return Response(shapes.deployment_shape(found, endpoint, endpoint.organization))


class DeploymentUpdateApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoint_deployment_update",
        summary="Scale a deployment (minReplicas; 0 stops it), its idle stop or its name",
        request=None,
        parameters=_MASK,
        responses={200: None, **openai_error_responses(400, 401, 402, 403, 404, 409, 412, 429)},
    )
    def patch(
        self, request: Request, project_id: str, endpoint_id: str, deployment_id: str
    ) -> Response:
        endpoint = _endpoint(request, project_id, endpoint_id)
        found = endpoints.deployment_get(endpoint=endpoint, deployment_id=deployment_id)
        data = inputs.body_object(request.data)
        updated = endpoints.deployment_update(
            deployment=found,
            data=data,
            update_mask=request.query_params.get("update_mask"),
            precondition=_precondition(request, data.get("etag")),
        )
        return Response(shapes.deployment_shape(updated, endpoint, endpoint.organization))


class DeploymentDeleteApi(V1Api):
    @extend_schema(
        operation_id="v2_endpoint_deployment_delete",
        summary="Delete a deployment: its replicas' leases end, billed to the last whole minute",
        parameters=_ETAG,
        responses={200: None, **openai_error_responses(401, 403, 404, 409, 412, 429)},
    )
    def delete(
        self, request: Request, project_id: str, endpoint_id: str, deployment_id: str
    ) -> Response:
        endpoint = _endpoint(request, project_id, endpoint_id)
        found = endpoints.deployment_get(endpoint=endpoint, deployment_id=deployment_id)
        endpoints.deployment_delete(
            deployment=found,
            precondition=_precondition(request, request.query_params.get("etag")),
        )
        return Response({})
