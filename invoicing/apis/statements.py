"""Providers' monthly statements."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import (
    MoneyText,
)
from core.converters import query_id
from core.errors import InvalidInput, NotFound
from core.pagination import page_serializer, paginated_response
from core.schema import error_responses
from core.tenancy import get_caller
from invoicing import selectors
from invoicing.apis.common import _period

# --- provider statements --------------------------------------------------------------


class IsProviderOrPlatformFinance(BasePermission):
    message = "this needs a provider organization (or the operator's finance staff)"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = getattr(request, "caller", None)
        return caller is not None and (
            caller.organization.is_provider or caller.is_platform_finance
        )


class ProviderStatementSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    organization = serializers.IntegerField(source="organization_id", read_only=True)
    period = serializers.SerializerMethodField(help_text="YYYY-MM")
    currency = serializers.CharField(read_only=True)
    gpu_seconds = serializers.IntegerField(read_only=True)
    gross_micros = serializers.IntegerField(read_only=True, help_text="at lease prices")
    gross = MoneyText("gross_micros")
    fee_micros = serializers.IntegerField(
        read_only=True, help_text="the platform fee buyers paid on top (not deducted)"
    )
    fee = MoneyText("fee_micros")
    net_payable_micros = serializers.IntegerField(read_only=True)
    net_payable = MoneyText("net_payable_micros")
    payouts_micros = serializers.IntegerField(read_only=True)
    payouts = MoneyText("payouts_micros")
    closing_balance_micros = serializers.IntegerField(
        read_only=True, help_text="the payable at the end of the month"
    )
    closing_balance = MoneyText("closing_balance_micros")
    generated_at = serializers.DateTimeField(read_only=True)

    def get_period(self, statement: Any) -> str:
        return f"{statement.period_start:%Y-%m}"


class ProviderStatementListApi(APIView):
    permission_classes = [IsProviderOrPlatformFinance]

    @extend_schema(
        operation_id="statements_list",
        summary="Your monthly statements of closed months, newest first (providers)",
        description="Operator finance staff see every provider's (organization= narrows "
        "it to one). The current month: GET /api/v1/statements/{period}.",
        tags=["statements"],
        parameters=[
            OpenApiParameter(
                "organization", OpenApiTypes.INT, description="operator finance: one org"
            )
        ],
        responses={
            200: page_serializer(ProviderStatementSerializer),
            **error_responses(400, 401, 403, 429),
        },
    )
    def get(self, request: Request) -> Response:
        statements = selectors.statements_for_caller(
            caller=get_caller(request), organization_id=query_id(request, "organization")
        )
        return paginated_response(
            queryset=statements,
            serializer_class=ProviderStatementSerializer,
            request=request,
            view=self,
        )


class ProviderStatementDetailApi(APIView):
    permission_classes = [IsProviderOrPlatformFinance]

    @extend_schema(
        operation_id="statements_retrieve",
        summary="A provider's month: GPU time per node and GPU model, earnings, fees, payouts",
        description="A closed month answers the statement written at its close "
        "(closed: true); the current month (or one not closed yet) is computed from the "
        "journal now. Each line lists the journal entries it adds up. Operator finance "
        "staff name the provider with organization=.",
        tags=["statements"],
        parameters=[
            OpenApiParameter(
                "period", OpenApiTypes.STR, OpenApiParameter.PATH, description="YYYY-MM"
            ),
            OpenApiParameter(
                "organization", OpenApiTypes.INT, description="operator finance: the provider"
            ),
        ],
        responses={
            200: inline_serializer(
                "ProviderStatementDocument",
                {
                    "organization": serializers.IntegerField(),
                    "period": serializers.CharField(),
                    "closed": serializers.BooleanField(),
                    "generated_at": serializers.DateTimeField(),
                    "statement": serializers.DictField(
                        help_text="lines (node, gpu_model, gpu_seconds, gpu_hours, gross, "
                        "platform_fee, net_payable, entries), payouts and totals"
                    ),
                },
            ),
            **error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request, period: str) -> Response:
        caller = get_caller(request)
        month = _period(period)
        now = timezone.now()
        if month > now.date():
            raise InvalidInput(f"{period} has not begun yet", details={"parameter": "period"})
        wanted = query_id(request, "organization") or caller.organization.pk
        provider = selectors.organization_for_caller(caller=caller, organization_id=wanted)
        if not provider.is_provider:
            raise NotFound(
                f"{provider.name} is not a provider", details={"organization": provider.pk}
            )
        found = selectors.statement_for_period(
            provider=provider, period=month, now=now, currency=settings.TANDEM_CURRENCY
        )
        return Response(
            {
                "organization": found.organization_id,
                "period": f"{found.period:%Y-%m}",
                "closed": found.closed,
                "generated_at": found.generated_at,
                "statement": found.document,
            }
        )
