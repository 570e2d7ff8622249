"""Sites: list, add, one."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.idempotency import idempotent
from core.pagination import page_serializer, paginated_response
from core.schema import error_responses
from core.tenancy import get_caller
from providers import selectors, services
from providers.apis.common import TAG_PORTAL
from providers.models import Site
from providers.permissions import (
    IsProviderAdmin,
    IsProviderMember,
)


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "name", "region", "country", "created_at"]
        read_only_fields = fields


class SiteCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    region = serializers.RegexField(r"^[a-z0-9][a-z0-9-]{0,63}$", help_text="e.g. eu-central")
    country = serializers.RegexField(r"^[A-Za-z]{2}$", help_text="ISO 3166-1 alpha-2")


class SiteListApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_sites_list",
        summary="Your sites",
        tags=[TAG_PORTAL],
        responses={200: page_serializer(SiteSerializer), **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return paginated_response(
            queryset=selectors.sites_for_org(organization=caller.organization),
            serializer_class=SiteSerializer,
            request=request,
            view=self,
        )


class SiteCreateApi(APIView):
    permission_classes = [IsProviderAdmin]

    @extend_schema(
        operation_id="provider_sites_create",
        summary="Add a site",
        tags=[TAG_PORTAL],
        request=SiteCreateInputSerializer,
        responses={201: SiteSerializer, **error_responses(400, 401, 403, 409, 422, 429)},
    )
    @idempotent()
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = SiteCreateInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        site = services.site_create(organization=caller.organization, **given.validated_data)
        return Response(SiteSerializer(site).data, status=status.HTTP_201_CREATED)


class SiteDetailApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_sites_retrieve",
        summary="One site",
        tags=[TAG_PORTAL],
        responses={200: SiteSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, site_id: int) -> Response:
        caller = get_caller(request)
        site = selectors.site_get(organization=caller.organization, site_id=site_id)
        return Response(SiteSerializer(site).data)
