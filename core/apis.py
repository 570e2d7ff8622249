"""HTTP endpoints of the shared kernel: health, and the tenancy API under /api/v1/.

One view per operation: parse input, check permission, call one selector or service,
serialize output. Every query is scoped to ``request.caller.organization``.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import health, selectors, services
from core.models import ApiKey, Membership, Organization
from core.pagination import page_serializer, paginated_response
from core.permissions import IsOrgAdmin
from core.schema import error_responses
from core.tenancy import get_caller

# --- health -----------------------------------------------------------------


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers and orchestrators: no authentication, nothing secret."""
    database = health.check_database()
    broker = health.check_broker()
    healthy = database["ok"] and broker["ok"]
    return JsonResponse(
        {"status": "ok" if healthy else "degraded", "database": database, "broker": broker},
        status=200 if healthy else 503,
    )


# --- serializers ------------------------------------------------------------


class OrganizationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = ["id", "name", "kind", "is_operator", "created_at"]
        read_only_fields = fields


class ApiKeySerializer(serializers.ModelSerializer):
    """An API key as listed: never its secret, nor the secret's hash. ``scope``: ``org``
    (acts for the organization with its role) or ``agent`` (a node agent's key: the
    agent API of its own node only)."""

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "role",
            "scope",
            "prefix",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]
        read_only_fields = fields


class ApiKeyCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, default="default")
    # Least privilege unless asked: a key for a script rarely needs to manage keys.
    role = serializers.ChoiceField(choices=Membership.Role.choices, default="member")


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(
        read_only=True, help_text="the API key itself: shown this once, never again"
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


# --- organization -----------------------------------------------------------


class OrganizationDetailApi(APIView):
    @extend_schema(
        operation_id="organization_retrieve",
        summary="Your organization",
        tags=["tenancy"],
        responses={200: OrganizationSerializer, **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return Response(OrganizationSerializer(caller.organization).data)


# --- API keys ---------------------------------------------------------------


class ApiKeyListApi(APIView):
    @extend_schema(
        operation_id="api_keys_list",
        summary="Your organization's API keys, newest first",
        tags=["tenancy"],
        responses={200: page_serializer(ApiKeySerializer), **error_responses(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return paginated_response(
            queryset=selectors.api_keys_for_org(organization=caller.organization),
            serializer_class=ApiKeySerializer,
            request=request,
            view=self,
        )


class ApiKeyCreateApi(APIView):
    # No Idempotency-Key here on purpose: a stored replay would keep the new key's
    # secret in the database. A retried create makes a second key; revoke the spare.
    permission_classes = [IsOrgAdmin]

    @extend_schema(
        operation_id="api_keys_create",
        summary="Create an API key (admins)",
        description="The response holds the key itself, shown this once.",
        tags=["tenancy"],
        request=ApiKeyCreateInputSerializer,
        responses={201: ApiKeyCreatedSerializer, **error_responses(400, 401, 403, 413, 429)},
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = ApiKeyCreateInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        created = services.api_key_create(
            organization=caller.organization,
            name=given.validated_data["name"],
            role=given.validated_data["role"],
        )
        body = ApiKeyCreatedSerializer(created.api_key).data
        body["key"] = created.raw_key
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})


class ApiKeyRevokeApi(APIView):
    permission_classes = [IsOrgAdmin]

    @extend_schema(
        operation_id="api_keys_revoke",
        summary="Revoke an API key (admins)",
        description="Takes effect at once. Revoking a revoked key changes nothing.",
        tags=["tenancy"],
        request=None,
        responses={200: ApiKeySerializer, **error_responses(401, 403, 404, 429)},
    )
    def post(self, request: Request, api_key_id: int) -> Response:
        caller = get_caller(request)
        api_key = selectors.api_key_get(organization=caller.organization, api_key_id=api_key_id)
        api_key = services.api_key_revoke(api_key=api_key)
        return Response(ApiKeySerializer(api_key).data)
