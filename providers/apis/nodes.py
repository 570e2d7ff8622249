"""Nodes: list (GPUs, live telemetry, health), one (with its reliability), telemetry per minute."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.pagination import page_serializer, paginated_response
from core.schema import error_responses
from core.tenancy import get_caller
from providers import selectors
from providers.apis.common import TAG_PORTAL, int_param
from providers.apis.sites import SiteSerializer
from providers.models import Gpu, GpuMinuteRollup, GpuSample, Node
from providers.permissions import (
    IsProviderMember,
)


class GpuSampleSerializer(serializers.ModelSerializer):
    class Meta:
        model = GpuSample
        fields = [
            "sampled_at",
            "utilization_pct",
            "memory_used_mib",
            "temperature_c",
            "power_mw",
            "ecc_corrected",
            "ecc_uncorrected",
            "xid_events",
        ]
        read_only_fields = fields


class GpuSerializer(serializers.ModelSerializer):
    telemetry = serializers.SerializerMethodField(help_text="the latest sample, or null")

    class Meta:
        model = Gpu
        fields = [
            "index",
            "uuid",
            "name",
            "model",
            "memory_total_mib",
            "interconnect",
            "nvlink_links",
            "pcie_generation",
            "pcie_width",
            "mig_mode",
            "telemetry",
        ]
        read_only_fields = fields

    @extend_schema_field(GpuSampleSerializer(allow_null=True))
    def get_telemetry(self, gpu: Gpu) -> dict | None:
        # A reverse one-to-one without a row raises RelatedObjectDoesNotExist, an
        # AttributeError, so getattr's default covers a GPU with no sample yet.
        sample = getattr(gpu, "sample", None)
        return GpuSampleSerializer(sample).data if sample is not None else None


class NodeSerializer(serializers.ModelSerializer):
    site = SiteSerializer(read_only=True, allow_null=True)
    gpus = serializers.SerializerMethodField()

    class Meta:
        model = Node
        fields = [
            "id",
            "hostname",
            "site",
            "health",
            "health_reason",
            "health_changed_at",
            "last_heartbeat_at",
            "heartbeat_interval_seconds",
            "driver_version",
            "cuda_version",
            "agent_version",
            "inventory_source",
            "registered_at",
            "reliability_score",
            "gpus",
        ]
        read_only_fields = fields

    @extend_schema_field(GpuSerializer(many=True))
    def get_gpus(self, node: Node) -> Any:
        gpus = getattr(node, "present_gpus", None)
        if gpus is None:
            gpus = node.gpus.filter(present=True).select_related("sample")
        return GpuSerializer(gpus, many=True).data


class ReliabilitySerializer(serializers.Serializer):
    score = serializers.FloatField(allow_null=True, help_text="0..1; see formula")
    formula = serializers.CharField()
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField()
    minutes_expected = serializers.IntegerField()
    minutes_up = serializers.IntegerField(help_text="minutes with at least one heartbeat")
    uptime_share = serializers.FloatField(allow_null=True)
    leases_ended = serializers.IntegerField()
    leases_ended_normally = serializers.IntegerField()
    lease_share = serializers.FloatField(allow_null=True, help_text="null: no leases yet")


class NodeDetailSerializer(NodeSerializer):
    reliability = serializers.SerializerMethodField()

    class Meta(NodeSerializer.Meta):
        fields = [*NodeSerializer.Meta.fields, "reliability"]
        read_only_fields = fields

    @extend_schema_field(ReliabilitySerializer)
    def get_reliability(self, node: Node) -> dict:
        return ReliabilitySerializer(selectors.node_reliability(node=node)).data


class TelemetryMinuteSerializer(serializers.ModelSerializer):
    gpu_uuid = serializers.CharField(source="gpu.uuid")
    gpu_index = serializers.IntegerField(source="gpu.index")
    utilization_avg_pct = serializers.SerializerMethodField()
    power_avg_mw = serializers.SerializerMethodField()

    class Meta:
        model = GpuMinuteRollup
        fields = [
            "minute",
            "gpu_uuid",
            "gpu_index",
            "samples",
            "utilization_avg_pct",
            "utilization_max",
            "memory_used_max_mib",
            "temperature_max_c",
            "power_avg_mw",
            "xid_count",
        ]
        read_only_fields = fields

    def get_utilization_avg_pct(self, row: GpuMinuteRollup) -> float | None:
        if not row.utilization_samples:
            return None
        return round(row.utilization_sum / row.utilization_samples, 2)

    def get_power_avg_mw(self, row: GpuMinuteRollup) -> int | None:
        return row.power_sum_mw // row.power_samples if row.power_samples else None


class NodeListApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_nodes_list",
        summary="Your nodes, with their GPUs, live telemetry and health",
        tags=[TAG_PORTAL],
        responses={200: page_serializer(NodeSerializer), **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return paginated_response(
            queryset=selectors.nodes_for_org(organization=caller.organization),
            serializer_class=NodeSerializer,
            request=request,
            view=self,
        )


class NodeDetailApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_nodes_retrieve",
        summary="One node, with its reliability score and the score's inputs",
        tags=[TAG_PORTAL],
        responses={200: NodeDetailSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, node_id: int) -> Response:
        caller = get_caller(request)
        node = selectors.node_get(organization=caller.organization, node_id=node_id)
        return Response(NodeDetailSerializer(node).data)


class NodeTelemetryApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_nodes_telemetry",
        summary="A node's telemetry per GPU per minute",
        tags=[TAG_PORTAL],
        parameters=[
            OpenApiParameter(
                "minutes", OpenApiTypes.INT, description="how far back, 1 to 1440 (default 60)"
            )
        ],
        responses={
            200: TelemetryMinuteSerializer(many=True),
            **error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request, node_id: int) -> Response:
        caller = get_caller(request)
        minutes = int_param(request, "minutes", default=60, low=1, high=1440)
        node = selectors.node_get(organization=caller.organization, node_id=node_id)
        now = timezone.now()
        rows = selectors.node_telemetry(
            node=node, since=now - timedelta(minutes=minutes), until=now + timedelta(minutes=1)
        )
        return Response(TelemetryMinuteSerializer(rows, many=True).data)
