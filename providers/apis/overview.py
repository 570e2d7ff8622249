"""The provider's overview: GPU-hours listed per day, reliability over all nodes,
the GPU catalog."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.schema import error_responses
from core.tenancy import get_caller
from providers import catalog, selectors
from providers.apis.common import TAG_PORTAL, int_param
from providers.apis.nodes import ReliabilitySerializer
from providers.permissions import (
    IsProviderMember,
)


class GpuModelSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    memory_gib = serializers.IntegerField()
    interconnect = serializers.CharField()
    relative_performance = serializers.IntegerField(help_text="A100 = 100")


class DayUsageSerializer(serializers.Serializer):
    day = serializers.DateField()
    gpu_seconds_listed = serializers.IntegerField()
    gpu_hours_listed = serializers.FloatField()


class UtilizationSerializer(serializers.Serializer):
    days = DayUsageSerializer(many=True)
    note = serializers.CharField()


class UtilizationApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_utilization",
        summary="GPU-hours listed per day (UTC)",
        tags=[TAG_PORTAL],
        parameters=[OpenApiParameter("days", OpenApiTypes.INT, description="1 to 90, default 30")],
        responses={200: UtilizationSerializer, **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        days = int_param(request, "days", default=30, low=1, high=90)
        rows = selectors.listed_gpu_seconds_by_day(organization=caller.organization, days=days)
        return Response(
            UtilizationSerializer(
                {
                    "days": rows,
                    "note": "leased GPU-hours will follow once the marketplace records leases",
                }
            ).data
        )


class ProviderReliabilityApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_reliability",
        summary="Your reliability score over all nodes, with its inputs",
        tags=[TAG_PORTAL],
        responses={200: ReliabilitySerializer, **error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        reliability = selectors.provider_reliability(organization=caller.organization)
        return Response(ReliabilitySerializer(reliability).data)


class GpuModelListApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_gpu_models",
        summary="The GPU catalog offers refer to",
        tags=[TAG_PORTAL],
        responses={200: GpuModelSerializer(many=True), **error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        return Response(GpuModelSerializer(catalog.CATALOG, many=True).data)
