"""The provider portal API (/api/v1/provider/...) and the agent API (/api/v1/agent/...).

One view per operation: parse input, check permission, call one selector or service,
serialize output. Every query is scoped to ``request.caller.organization``: another
organization's sites, nodes and offers are 404s, never 403s, so ids leak nothing.

Earnings are not here yet: they live in the ledger (the provider's payable account),
and providers may import only core. They will be exposed once billing publishes
provider statements as events (or core grows a read port for them).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

import msgspec
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import (
    NotAuthenticated,
    ParseError,
    PermissionDenied,
    UnsupportedMediaType,
)
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.authentication import api_key_caller
from core.converters import query_int
from core.errors import InvalidInput, error_response
from core.idempotency import idempotent
from core.pagination import page_serializer, paginated_response
from core.schema import error_responses
from core.tenancy import get_caller
from providers import catalog, selectors, services
from providers.models import AgentKey, Gpu, GpuMinuteRollup, GpuSample, Node, Offer, Site
from providers.permissions import (
    AGENT_ONLY_MESSAGE,
    IsAgentKey,
    IsProviderAdmin,
    IsProviderMember,
    agent_node_id_or_404,
    is_agent_caller,
)

TAG_PORTAL = "provider portal"
TAG_AGENT = "provider agent"
MAX_GPUS_PER_NODE = services.MAX_GPUS_PER_NODE

# --- serializers: output ----------------------------------------------------


@extend_schema_field(
    {
        "type": "string",
        "pattern": "^(" + "|".join(Offer.Kind.values) + ")$",
        "description": "on_demand, or interruptible (may be preempted with the offer's notice)",
    }
)
class OfferKindField(serializers.ChoiceField):
    """Documented as a pattern, not an enum: drf-spectacular names enums by field name,
    and another ``kind`` enum (organization, account) makes it warn. With
    ``ENUM_NAME_OVERRIDES = {"OfferKindEnum": "providers.models.Offer.Kind"}`` in
    settings this could be a named enum again."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Offer.Kind.choices, **kwargs)


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "name", "region", "country", "created_at"]
        read_only_fields = fields


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


class OfferSerializer(serializers.ModelSerializer):
    kind = OfferKindField(read_only=True)
    price_per_a100_hour_micros = serializers.SerializerMethodField(
        help_text="price per unit of work: an hour of A100-equivalent throughput "
        "(price x 100 / the model's relative performance)"
    )

    def get_price_per_a100_hour_micros(self, offer: Offer) -> int | None:
        return catalog.price_per_a100_hour_micros(
            price_per_gpu_hour_micros=offer.price_per_gpu_hour_micros, slug=offer.gpu_model
        )

    class Meta:
        model = Offer
        fields = [
            "id",
            "node_id",
            "gpu_model",
            "gpu_count",
            "price_per_gpu_hour_micros",
            "price_per_a100_hour_micros",
            "currency",
            "window_start",
            "window_end",
            "min_lease_seconds",
            "max_lease_seconds",
            "kind",
            "preemption_grace_seconds",
            "region",
            "status",
            "created_at",
            "withdrawn_at",
            "forced_end_at",
        ]
        read_only_fields = fields


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


class GpuModelSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    memory_gib = serializers.IntegerField()
    interconnect = serializers.CharField()
    relative_performance = serializers.IntegerField(help_text="A100 = 100")


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


class DayUsageSerializer(serializers.Serializer):
    day = serializers.DateField()
    gpu_seconds_listed = serializers.IntegerField()
    gpu_hours_listed = serializers.FloatField()


class UtilizationSerializer(serializers.Serializer):
    days = DayUsageSerializer(many=True)
    note = serializers.CharField()


# --- serializers: input -----------------------------------------------------


class SiteCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    region = serializers.RegexField(r"^[a-z0-9][a-z0-9-]{0,63}$", help_text="e.g. eu-central")
    country = serializers.RegexField(r"^[A-Za-z]{2}$", help_text="ISO 3166-1 alpha-2")


class AgentKeyCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=90, default="agent")


class OfferCreateInputSerializer(serializers.Serializer):
    node_id = serializers.IntegerField()
    gpu_model = serializers.CharField(max_length=64, help_text="a catalog slug, see gpu-models")
    gpu_count = serializers.IntegerField(help_text="GPUs of that model on the node")
    price_per_gpu_hour_micros = serializers.IntegerField(
        max_value=10**12, help_text="integer micro-units of the currency (1 USD = 1,000,000)"
    )
    kind = OfferKindField()
    window_start = serializers.DateTimeField(required=False, help_text="default: now")
    window_end = serializers.DateTimeField(
        required=False, allow_null=True, help_text="exclusive; null: open-ended"
    )
    min_lease_seconds = serializers.IntegerField(default=3600, max_value=10**8)
    max_lease_seconds = serializers.IntegerField(required=False, allow_null=True, max_value=10**8)
    preemption_grace_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=86_400,
        help_text="interruptible offers only: notice before preemption",
    )


class OfferRepriceInputSerializer(serializers.Serializer):
    price_per_gpu_hour_micros = serializers.IntegerField(max_value=10**12)


class OfferWithdrawInputSerializer(serializers.Serializer):
    force = serializers.BooleanField(
        default=False,
        help_text="end running leases now (buyers are not billed past this moment)",
    )


class GpuInventoryInputSerializer(serializers.Serializer):
    index = serializers.IntegerField(min_value=0, max_value=MAX_GPUS_PER_NODE)
    uuid = serializers.RegexField(r"^[A-Za-z0-9-]{4,96}$")
    name = serializers.CharField(max_length=128)
    memory_total_mib = serializers.IntegerField(min_value=1, max_value=10**7)
    interconnect = serializers.ChoiceField(choices=["nvlink", "pcie"], required=False)
    nvlink_links = serializers.IntegerField(min_value=0, max_value=64, default=0)
    pcie_generation = serializers.IntegerField(
        min_value=1, max_value=16, required=False, allow_null=True
    )
    pcie_width = serializers.IntegerField(
        min_value=1, max_value=64, required=False, allow_null=True
    )
    mig_mode = serializers.BooleanField(required=False, allow_null=True, default=None)


class NodeRegisterInputSerializer(serializers.Serializer):
    hostname = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
    site = serializers.CharField(
        max_length=100, required=False, allow_null=True, help_text="the name of one of your sites"
    )
    agent_version = serializers.CharField(max_length=32, default="")
    inventory_source = serializers.ChoiceField(choices=["nvml", "file"], default="nvml")
    driver_version = serializers.CharField(max_length=64, allow_blank=True, default="")
    cuda_version = serializers.CharField(max_length=32, allow_blank=True, default="")
    gpus = GpuInventoryInputSerializer(  # type: ignore[call-arg]
        many=True, max_length=MAX_GPUS_PER_NODE
    )

    def validate_gpus(self, gpus: list[dict]) -> list[dict]:
        uuids = [gpu["uuid"] for gpu in gpus]
        if len(set(uuids)) != len(uuids):
            raise serializers.ValidationError("each GPU UUID may appear once")
        return gpus


class RegisteredSerializer(serializers.Serializer):
    node_id = serializers.IntegerField()
    heartbeat_interval_seconds = serializers.IntegerField()
    health = serializers.CharField()
    gpus = serializers.ListField(child=serializers.DictField())


class GpuTelemetryInputSerializer(serializers.Serializer):
    uuid = serializers.CharField(max_length=96)
    utilization_pct = serializers.IntegerField(
        min_value=0, max_value=100, required=False, allow_null=True
    )
    memory_used_mib = serializers.IntegerField(
        min_value=0, max_value=10**7, required=False, allow_null=True
    )
    temperature_c = serializers.IntegerField(
        min_value=-100, max_value=200, required=False, allow_null=True
    )
    power_mw = serializers.IntegerField(
        min_value=0, max_value=10**8, required=False, allow_null=True
    )
    ecc_corrected = serializers.IntegerField(
        min_value=0, max_value=2**62, required=False, allow_null=True
    )
    ecc_uncorrected = serializers.IntegerField(
        min_value=0, max_value=2**62, required=False, allow_null=True
    )
    xid_events = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=10**6),
        max_length=100,
        default=list,
    )


class HeartbeatInputSerializer(serializers.Serializer):
    gpus = GpuTelemetryInputSerializer(  # type: ignore[call-arg]
        many=True, max_length=MAX_GPUS_PER_NODE, default=list
    )


class HeartbeatAcceptedSerializer(serializers.Serializer):
    health = serializers.CharField()
    health_reason = serializers.CharField()
    heartbeat_interval_seconds = serializers.IntegerField()
    unknown_gpu_uuids = serializers.ListField(
        child=serializers.CharField(), help_text="not in the inventory: register again"
    )


def _int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    return query_int(request, name, low=low, high=high, default=default)


# --- sites ------------------------------------------------------------------


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


# --- nodes ------------------------------------------------------------------


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
        minutes = _int_param(request, "minutes", default=60, low=1, high=1440)
        node = selectors.node_get(organization=caller.organization, node_id=node_id)
        now = timezone.now()
        rows = selectors.node_telemetry(
            node=node, since=now - timedelta(minutes=minutes), until=now + timedelta(minutes=1)
        )
        return Response(TelemetryMinuteSerializer(rows, many=True).data)


# --- offers -----------------------------------------------------------------


class OfferListApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_offers_list",
        summary="Your offers, newest first",
        tags=[TAG_PORTAL],
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=[s.value for s in Offer.Status])
        ],
        responses={200: page_serializer(OfferSerializer), **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        wanted = request.query_params.get("status")
        if wanted is not None and wanted not in Offer.Status.values:
            raise InvalidInput(
                f"status must be one of {', '.join(Offer.Status.values)}",
                details={"parameter": "status"},
            )
        return paginated_response(
            queryset=selectors.offers_for_org(organization=caller.organization, status=wanted),
            serializer_class=OfferSerializer,
            request=request,
            view=self,
        )


class OfferCreateApi(APIView):
    permission_classes = [IsProviderAdmin]

    @extend_schema(
        operation_id="provider_offers_create",
        summary="List capacity",
        tags=[TAG_PORTAL],
        description=(
            "Each bad input is a 400 naming the field in error.details.fields: an unknown "
            "gpu_model, a gpu_count above what the node has, a price that is not positive, "
            "a window_end not after window_start, a window overlapping offers that list "
            "the same GPUs (window_start)."
        ),
        request=OfferCreateInputSerializer,
        responses={201: OfferSerializer, **error_responses(400, 401, 403, 404, 409, 422, 429)},
    )
    @idempotent()
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = OfferCreateInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        offer = services.offer_create(organization=caller.organization, **given.validated_data)
        return Response(OfferSerializer(offer).data, status=status.HTTP_201_CREATED)


class OfferDetailApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_offers_retrieve",
        summary="One offer",
        tags=[TAG_PORTAL],
        responses={200: OfferSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, offer_id: int) -> Response:
        caller = get_caller(request)
        offer = selectors.offer_get(organization=caller.organization, offer_id=offer_id)
        return Response(OfferSerializer(offer).data)


class OfferPauseApi(APIView):
    permission_classes = [IsProviderAdmin]

    @extend_schema(
        operation_id="provider_offers_pause",
        summary="Pause an offer (no new leases)",
        tags=[TAG_PORTAL],
        request=None,
        responses={200: OfferSerializer, **error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, offer_id: int) -> Response:
        caller = get_caller(request)
        offer = selectors.offer_get(organization=caller.organization, offer_id=offer_id)
        return Response(OfferSerializer(services.offer_pause(offer=offer)).data)


class OfferResumeApi(APIView):
    permission_classes = [IsProviderAdmin]

    @extend_schema(
        operation_id="provider_offers_resume",
        summary="Resume a paused offer",
        tags=[TAG_PORTAL],
        request=None,
        responses={200: OfferSerializer, **error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, offer_id: int) -> Response:
        caller = get_caller(request)
        offer = selectors.offer_get(organization=caller.organization, offer_id=offer_id)
        return Response(OfferSerializer(services.offer_resume(offer=offer)).data)


class OfferRepriceApi(APIView):
    permission_classes = [IsProviderAdmin]

    @extend_schema(
        operation_id="provider_offers_reprice",
        summary="Reprice an offer (new leases only)",
        tags=[TAG_PORTAL],
        request=OfferRepriceInputSerializer,
        responses={200: OfferSerializer, **error_responses(400, 401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, offer_id: int) -> Response:
        caller = get_caller(request)
        given = OfferRepriceInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        offer = selectors.offer_get(organization=caller.organization, offer_id=offer_id)
        offer = services.offer_reprice(offer=offer, **given.validated_data)
        return Response(OfferSerializer(offer).data)


class OfferWithdrawApi(APIView):
    permission_classes = [IsProviderAdmin]

    @extend_schema(
        operation_id="provider_offers_withdraw",
        summary="Withdraw an offer",
        description=(
            "Running leases run to the end of their window; with force=true they end now, "
            "and buyers are not billed past that moment (forced_end_at)."
        ),
        tags=[TAG_PORTAL],
        request=OfferWithdrawInputSerializer,
        responses={200: OfferSerializer, **error_responses(400, 401, 403, 404, 429)},
    )
    def post(self, request: Request, offer_id: int) -> Response:
        caller = get_caller(request)
        given = OfferWithdrawInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        offer = selectors.offer_get(organization=caller.organization, offer_id=offer_id)
        offer = services.offer_withdraw(offer=offer, **given.validated_data)
        return Response(OfferSerializer(offer).data)


# --- utilization, reliability, catalog --------------------------------------


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
        days = _int_param(request, "days", default=30, low=1, high=90)
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


# --- agent keys -------------------------------------------------------------


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


# --- the agent API ----------------------------------------------------------


class NodeRegisterApi(APIView):
    permission_classes = [IsAgentKey]

    @extend_schema(
        operation_id="agent_nodes_register",
        summary="Register a node and report its inventory (agents)",
        description="Agent keys only. Registering the same hostname again refreshes its "
        "inventory. A key is bound to the node it first registers: another hostname is a 409 "
        "naming the key's node (one agent key per node).",
        tags=[TAG_AGENT],
        request=NodeRegisterInputSerializer,
        responses={200: RegisteredSerializer, **error_responses(400, 401, 403, 409, 413, 429)},
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = NodeRegisterInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        node = services.node_register(
            organization=caller.organization,
            hostname=data["hostname"],
            site_name=data.get("site"),
            api_key_id=caller.api_key_id,
            agent_version=data["agent_version"],
            inventory_source=data["inventory_source"],
            inventory={
                "driver_version": data["driver_version"],
                "cuda_version": data["cuda_version"],
                "gpus": data["gpus"],
            },
        )
        gpus = node.gpus.filter(present=True).order_by("index")
        return Response(
            RegisteredSerializer(
                {
                    "node_id": node.pk,
                    "heartbeat_interval_seconds": node.heartbeat_interval_seconds,
                    "health": node.health,
                    "gpus": [{"uuid": g.uuid, "model": g.model or None} for g in gpus],
                }
            ).data
        )


_TELEMETRY_RANGES = {
    name: (
        field.min_value if field.min_value is not None else -(2**62),
        field.max_value if field.max_value is not None else 2**62,
    )
    for name, field in GpuTelemetryInputSerializer().fields.items()
    if isinstance(field, serializers.IntegerField)
}
_XIDS: Any = GpuTelemetryInputSerializer().fields["xid_events"]  # a ListField of integers
_MAX_XIDS = _XIDS.max_length

# The heartbeat body as msgspec types, made from GpuTelemetryInputSerializer's rules
# (which document it): decoding checks it, and a failure names the place.
_GpuTelemetryIn = msgspec.defstruct(
    "GpuTelemetryIn",
    [
        ("uuid", Annotated[str, msgspec.Meta(min_length=1, max_length=96)]),
        *(
            (name, Annotated[int, msgspec.Meta(ge=low, le=high)] | None, None)
            for name, (low, high) in _TELEMETRY_RANGES.items()
        ),
        (
            "xid_events",
            Annotated[
                list[
                    Annotated[int, msgspec.Meta(ge=_XIDS.child.min_value, le=_XIDS.child.max_value)]
                ],
                msgspec.Meta(max_length=_MAX_XIDS),
            ]
            | None,
            None,
        ),
    ],
)
_HeartbeatIn = msgspec.defstruct(
    "HeartbeatIn",
    [
        (
            "gpus",
            Annotated[list[_GpuTelemetryIn], msgspec.Meta(max_length=MAX_GPUS_PER_NODE)],  # type: ignore[valid-type]
            msgspec.field(default_factory=list),
        )
    ],
)
_heartbeat_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_HeartbeatIn)
_FAILURE_PLACE = re.compile(r" - at `\$\.?(.*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(\w+)`")


def heartbeat_samples(body: bytes) -> list[dict[str, Any]]:
    """The heartbeat body (JSON), checked: one dict per GPU, every telemetry field
    present (None where not reported). msgspec rather than a DRF serializer: this runs
    for every node every few seconds, and DRF's field machinery costs more than the
    database work. An error names the place, e.g. ``gpus[3].utilization_pct``."""
    try:
        heartbeat = _heartbeat_decoder.decode(body or b"{}")
    except msgspec.ValidationError as exc:
        raise serializers.ValidationError(_heartbeat_error(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ParseError(f"JSON parse error - {exc}") from None
    samples = [msgspec.structs.asdict(gpu) for gpu in heartbeat.gpus]
    seen: set[str] = set()
    for position, sample in enumerate(samples):
        if sample["uuid"] in seen:
            raise serializers.ValidationError(
                {f"gpus[{position}].uuid": ["each GPU may report once per heartbeat"]}
            )
        seen.add(sample["uuid"])
        if sample["xid_events"] is None:
            sample["xid_events"] = []
    return samples


def _heartbeat_error(message: str) -> dict[str, list[str]]:
    """msgspec's message (``Expected `int` <= 100 - at `$.gpus[1].utilization_pct```)
    as the API's field errors, in the words of the schema."""
    found = _FAILURE_PLACE.search(message)
    place = found.group(1) if found else ""
    missing = _MISSING_FIELD.match(message)
    if missing:
        place = f"{place}.{missing.group(1)}" if place else missing.group(1)
    place = re.sub(r"(\.xid_events)\[\d+\]$", r"\1", place)  # the list is the field
    name = place.rsplit(".", 1)[-1] if "." in place else ""
    if name in _TELEMETRY_RANGES:
        low, high = _TELEMETRY_RANGES[name]
        return {place: [f"must be a whole number from {low} to {high}"]}
    if name == "uuid":
        return {place: ["a GPU UUID is required"]}
    if name == "xid_events":
        return {place: [f"must be a list of at most {_MAX_XIDS} XID numbers"]}
    if place.startswith("gpus["):
        return {place.split(".", 1)[0]: ["must be an object"]}
    if "length <=" in message:
        return {"gpus": [f"at most {MAX_GPUS_PER_NODE} GPUs per heartbeat"]}
    return {"gpus": ["must be a list of GPU samples"]}


class NodeHeartbeatApi(APIView):
    """The heartbeat's documentation, and its answer to methods other than POST.
    POST is served by ``node_heartbeat`` below, without DRF."""

    permission_classes = [IsAgentKey]
    throttle_classes: list[Any] = []  # as node_heartbeat: no per-key rate limit

    @extend_schema(
        operation_id="agent_nodes_heartbeat",
        summary="A heartbeat with telemetry per GPU (agents)",
        tags=[TAG_AGENT],
        request=HeartbeatInputSerializer,
        responses={
            200: HeartbeatAcceptedSerializer,
            **error_responses(400, 401, 403, 404, 413),
        },
    )
    def post(self, request: Request, node_id: int) -> Response:
        raise NotImplementedError  # never called: see node_heartbeat


_heartbeat_other_methods = NodeHeartbeatApi.as_view()


@csrf_exempt  # API keys only: no session, so nothing to forge
def node_heartbeat(request: HttpRequest, node_id: int) -> HttpResponse:
    """POST /api/v1/agent/nodes/<id>/heartbeat: a plain Django view. Every node calls
    it every few seconds, and DRF's per-request machinery (negotiation, parsers,
    renderers) cost more than recording the heartbeat. The checks are the API's own,
    in DRF's order: the key (401: looked up on every request, so a revoked key fails
    at once), the role (403), the body (400, 413, 415), the node (404); errors go
    through core.errors' one handler.

    No per-key rate limit (core.throttling) here: its Redis round trip cost a tenth of
    a heartbeat. Agents pace themselves by the interval the server answers with; a
    key that sends faster only rewrites its own nodes' latest samples and counters
    (storage stays bounded), at most as fast as the server's workers take requests."""
    if request.method != "POST":
        return _heartbeat_other_methods(request, node_id=node_id)
    try:
        found = api_key_caller(request.META.get("HTTP_AUTHORIZATION", "").encode("latin-1"))
        if found is None:
            raise NotAuthenticated()
        caller, _ = found
        if not is_agent_caller(caller):
            raise PermissionDenied(AGENT_ONLY_MESSAGE)
        body = request.body
        if body and request.content_type != "application/json":
            raise UnsupportedMediaType(request.content_type or "")
        samples = heartbeat_samples(body)
        agent_node_id_or_404(caller, node_id)
        result = services.node_heartbeat_record(
            organization=caller.organization,
            node_id=node_id,
            samples=samples,
        )
    except Exception as exc:
        response = error_response(exc)
        if response is None:
            raise
        return response
    return HttpResponse(
        _encode_json(
            {
                "health": result.health,
                "health_reason": result.health_reason,
                "heartbeat_interval_seconds": result.heartbeat_interval_seconds,
                "unknown_gpu_uuids": result.unknown_gpu_uuids,
            }
        ),
        content_type="application/json",
    )


_encode_json = msgspec.json.Encoder().encode
# What drf-spectacular looks for on a callback (as for core.routing.by_method).
node_heartbeat.cls = NodeHeartbeatApi  # type: ignore[attr-defined]
node_heartbeat.initkwargs = {}  # type: ignore[attr-defined]
