"""Offers: list, create, one, pause, resume, reprice, withdraw."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidInput
from core.idempotency import idempotent
from core.pagination import page_serializer, paginated_response
from core.schema import error_responses
from core.tenancy import get_caller
from providers import catalog, selectors, services
from providers.apis.common import TAG_PORTAL
from providers.models import Offer
from providers.permissions import (
    IsProviderAdmin,
    IsProviderMember,
)


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
