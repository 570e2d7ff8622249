"""Agent keys: list, create (the key shown once)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.pagination import page_serializer, paginated_response
from core.schema import error_responses
from core.tenancy import get_caller
from providers import selectors, services
from providers.apis.common import TAG_PORTAL
from providers.models import AgentKey
from providers.permissions import (
    IsProviderAdmin,
    IsProviderMember,
)


class AgentKeySerializer(serializers.ModelSerializer):
    api_key_id = serializers.IntegerField(
        read_only=True, help_text="revoke with POST /api/v1/api-keys/{api_key_id}/revoke"
    )
    prefix = serializers.CharField(source="api_key.prefix", read_only=True)
    revoked_at = serializers.DateTimeField(
        source="api_key.revoked_at", read_only=True, allow_null=True
    )
    last_used_at = serializers.DateTimeField(
        source="api_key.last_used_at", read_only=True, allow_null=True
    )

    class Meta:
        model = AgentKey
        fields = ["id", "api_key_id", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class AgentKeyCreatedSerializer(AgentKeySerializer):
    key = serializers.CharField(read_only=True, help_text="shown this once, never again")

    class Meta(AgentKeySerializer.Meta):
        fields = [*AgentKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class AgentKeyCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=90, default="agent")


class AgentKeyListApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_agent_keys_list",
        summary="Your agent keys",
        tags=[TAG_PORTAL],
        responses={200: page_serializer(AgentKeySerializer), **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return paginated_response(
            queryset=selectors.agent_keys_for_org(organization=caller.organization),
            serializer_class=AgentKeySerializer,
            request=request,
            view=self,
        )


class AgentKeyCreateApi(APIView):
    # No Idempotency-Key: a stored replay would keep the key's secret in the database.
    permission_classes = [IsProviderAdmin]

    @extend_schema(
        operation_id="provider_agent_keys_create",
        summary="Create an API key for node agents (admins)",
        description="Revoke it with POST /api/v1/api-keys/{api_key_id}/revoke.",
        tags=[TAG_PORTAL],
        request=AgentKeyCreateInputSerializer,
        responses={201: AgentKeyCreatedSerializer, **error_responses(400, 401, 403, 429)},
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = AgentKeyCreateInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        created = services.agent_key_create(
            organization=caller.organization, name=given.validated_data["name"]
        )
        body = AgentKeyCreatedSerializer(created.agent_key).data
        body["key"] = created.raw_key
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})
