"""The price book's API: public prices, the operator's price schedule, and the
fine-tune estimate (``/api/v1/prices/…``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import MAX_REASON_LENGTH, MoneyText, actor_for, query_currency
from core.errors import InvalidInput
from core.idempotency import idempotent
from core.money import CURRENCIES, Money
from core.pagination import CursorPagination, page_serializer
from core.permissions import IsPlatformFinance
from core.schema import error_responses
from core.tenancy import get_caller
from pricing import selectors
from pricing import services as pricebook
from pricing.models import Price

# --- the price book ---------------------------------------------------------------


class PriceSerializer(serializers.Serializer):
    item = serializers.CharField(read_only=True)
    tier = serializers.CharField(read_only=True, help_text="model size tier, or empty")
    variant = serializers.CharField(
        read_only=True, help_text="training type, prompt or completion, or empty"
    )
    currency = serializers.CharField(read_only=True)
    value = serializers.IntegerField(read_only=True, help_text="an integer in `unit`")
    unit = serializers.SerializerMethodField()
    amount = serializers.SerializerMethodField(
        help_text="value as exact decimal text of the currency, for money items; else null"
    )
    effective_from = serializers.DateTimeField(read_only=True)

    def get_unit(self, row: Any) -> str:
        return selectors.PRICE_UNITS[row.item]

    def get_amount(self, row: Any) -> str | None:
        if row.item not in selectors.MONEY_ITEMS:
            return None
        return Money(row.value, row.currency).format()


class PriceVersionSerializer(PriceSerializer):
    id = serializers.IntegerField(read_only=True)
    state = serializers.SerializerMethodField(
        help_text="scheduled (not yet in force), in_force, or superseded"
    )
    public = serializers.BooleanField(read_only=True)
    reason = serializers.CharField(read_only=True)
    created_by = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)

    def get_state(self, row: Any) -> str:
        if row.effective_from > self.context["now"]:
            return "scheduled"
        return "in_force" if row.pk in self.context["in_force"] else "superseded"


class PriceScheduleInputSerializer(serializers.Serializer):
    item = serializers.CharField(max_length=32)
    tier = serializers.CharField(max_length=32, allow_blank=True, default="")
    variant = serializers.CharField(max_length=32, allow_blank=True, default="")
    value = serializers.IntegerField(
        help_text="in the item's unit: micros (per 1M tokens, per job), basis points "
        "(gpu_lease_fee) or days (welcome_credit_days)"
    )
    effective_from = serializers.DateTimeField(
        help_text="with a time zone; at least 15 minutes from now"
    )
    currency = serializers.CharField(max_length=3, required=False)
    public = serializers.BooleanField(default=True)
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)

    def validate_effective_from(self, value: datetime) -> datetime:
        raw = self.initial_data.get("effective_from")
        if isinstance(raw, str) and (parsed := parse_datetime(raw)) and parsed.tzinfo is None:
            raise serializers.ValidationError("must carry a time zone (Z or +00:00)")
        return value.astimezone(UTC)


class FineTuneEstimateInputSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    training_type = serializers.CharField(
        max_length=32, help_text="lora-sft, lora-dpo, full-sft or full-dpo"
    )
    training_tokens = serializers.IntegerField(min_value=0)
    epochs = serializers.IntegerField(min_value=1, default=1)
    validation_tokens = serializers.IntegerField(min_value=0, default=0)
    evaluations = serializers.IntegerField(min_value=0, default=0)


class FineTuneEstimateSerializer(serializers.Serializer):
    model = serializers.CharField()
    tier = serializers.CharField(help_text="the price book's size tier of the model")
    training_type = serializers.CharField()
    billable_tokens = serializers.IntegerField(
        help_text="training tokens x epochs + validation tokens x evaluations"
    )
    currency = serializers.CharField()
    rate_micros = serializers.IntegerField(help_text="per 1M tokens")
    rate = MoneyText("rate_micros")
    usage_micros = serializers.IntegerField(help_text="billable tokens at the rate")
    usage = MoneyText("usage_micros")
    minimum_micros = serializers.IntegerField(help_text="the per-job minimum")
    minimum = MoneyText("minimum_micros")
    amount_micros = serializers.IntegerField(help_text="the larger of usage and the minimum")
    amount = MoneyText("amount_micros")
    minimum_applied = serializers.BooleanField()
    available_micros = serializers.IntegerField(
        help_text="the organization's available credit (credit limit included)"
    )
    available = MoneyText("available_micros")
    covered = serializers.BooleanField(help_text="available credit covers the amount")
    priced_at = serializers.DateTimeField()


class PricePublicListApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="prices_list",
        summary="The public prices in force now (no API key needed)",
        description="One row per price: fine-tune and inference rates per 1M tokens by "
        "model size tier, the GPU lease platform fee, the per-job fine-tune minimum and "
        "the welcome credit. Values are integers in each row's unit; money rows also "
        "as exact decimal text.",
        tags=["prices"],
        responses={
            200: inline_serializer(
                "PublicPrices",
                {"at": serializers.DateTimeField(), "prices": PriceSerializer(many=True)},
            ),
            **error_responses(401),
        },
    )
    def get(self, request: Request) -> Response:
        at = timezone.now()
        rows = selectors.prices_public(at=at, currency=settings.TANDEM_CURRENCY)
        return Response({"at": at, "prices": PriceSerializer(rows, many=True).data})


class PriceScheduleListApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="prices_schedule_list",
        summary="Every version of every price: past, in force and scheduled (operator finance)",
        tags=["prices"],
        parameters=[
            OpenApiParameter("item", OpenApiTypes.STR, description="one item only"),
            OpenApiParameter("currency", OpenApiTypes.STR, enum=sorted(CURRENCIES)),
        ],
        responses={
            200: page_serializer(PriceVersionSerializer),
            **error_responses(400, 401, 403, 429),
        },
    )
    def get(self, request: Request) -> Response:
        item = request.query_params.get("item")
        if item is not None and item not in Price.Item.values:
            raise InvalidInput(
                f"item must be one of {', '.join(Price.Item.values)}",
                details={"parameter": "item"},
            )
        currency = query_currency(request)
        now = timezone.now()
        in_force = selectors.price_ids_in_force(
            at=now, currency=currency or settings.TANDEM_CURRENCY
        )
        paginator = CursorPagination()
        page = paginator.paginate_queryset(
            selectors.price_versions(item=item, currency=currency), request, view=self
        )
        data = PriceVersionSerializer(
            page, many=True, context={"now": now, "in_force": in_force}
        ).data
        return paginator.get_paginated_response(data)


class PriceScheduleCreateApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="prices_schedule_create",
        summary="Schedule a price change (operator finance)",
        description="A new version of one price, in force from effective_from — at "
        "least 15 minutes ahead, so usage already rated is never re-priced. Versions are "
        "never edited; a mistake is corrected by scheduling another.",
        tags=["prices"],
        request=PriceScheduleInputSerializer,
        responses={
            201: PriceVersionSerializer,
            **error_responses(400, 401, 403, 409, 422, 429),
        },
    )
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = PriceScheduleInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        price = pricebook.price_schedule(
            item=data["item"],
            tier=data["tier"],
            variant=data["variant"],
            value=data["value"],
            effective_from=data["effective_from"],
            currency=data.get("currency"),
            reason=data["reason"],
            public=data["public"],
            actor=actor_for(caller),
        )
        body = PriceVersionSerializer(
            price, context={"now": timezone.now(), "in_force": set()}
        ).data
        return Response(body, status=status.HTTP_201_CREATED)


class FineTuneEstimateApi(APIView):
    @extend_schema(
        operation_id="prices_fine_tune_estimate",
        summary="What a fine-tune would cost, and whether your credit covers it",
        description="(training tokens x epochs + validation tokens x evaluations) x the "
        "rate of the model's size tier and training type, at least the per-job minimum, "
        "at today's prices. Nothing is reserved.",
        tags=["prices"],
        request=FineTuneEstimateInputSerializer,
        responses={200: FineTuneEstimateSerializer, **error_responses(400, 401, 429)},
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = FineTuneEstimateInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        quote = pricebook.fine_tune_quote(
            **given.validated_data, organization_id=caller.organization.pk
        )
        return Response(FineTuneEstimateSerializer(quote).data)
