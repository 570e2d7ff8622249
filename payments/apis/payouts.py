"""Providers: Stripe Connect onboarding and their payouts."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import MoneyTextField
from core.errors import NotFound
from core.money import Money
from core.pagination import page_serializer, paginated_response
from core.tenancy import get_caller
from payments import selectors, services
from payments.apis.common import IsProviderAdmin, IsProviderMember, error_responses
from payments.models import ConnectedAccount, Payout


class ConnectedAccountSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)

    class Meta:
        model = ConnectedAccount
        fields = [
            "account_id",
            "country",
            "status",
            "details_submitted",
            "charges_enabled",
            "payouts_enabled",
            "requirements_due",
            "created_at",
            "updated_at",
        ]


class PayoutSerializer(serializers.ModelSerializer):
    amount = MoneyTextField("amount_micros")

    class Meta:
        model = Payout
        fields = [
            "id",
            "organization",
            "amount_micros",
            "amount",
            "currency",
            "status",
            "transfer_id",
            "attempts",
            "last_error",
            "created_at",
            "submitted_at",
            "resolved_at",
        ]


class _ConnectedAccountInput(serializers.Serializer):
    country = serializers.RegexField(r"^[A-Za-z]{2}$", required=False)
    email = serializers.EmailField(required=False, allow_blank=True)


class _AccountLinkInput(serializers.Serializer):
    refresh_url = serializers.URLField(max_length=2000)
    return_url = serializers.URLField(max_length=2000)


def _payout_lines(payout: Payout) -> list[dict[str, Any]]:
    return [
        {
            "entry": line.entry_id,
            "transfer_id": line.entry.payload.get("transfer_id")
            or line.entry.payload.get("hold_id"),
            "description": line.entry.payload.get("description", ""),
            "amount_micros": line.amount_micros,
            "amount": Money(line.amount_micros, line.currency).format(),
            "recorded_at": line.recorded_at.isoformat(),
        }
        for line in selectors.payout_lines(payout=payout)
    ]


# --- providers: Connect onboarding and payouts -------------------------------------


class ConnectedAccountApi(APIView):
    def get_permissions(self) -> list[BasePermission]:
        if self.request.method == "POST":
            return [IsProviderAdmin()]
        return [IsProviderMember()]

    @extend_schema(
        operation_id="connected_account_retrieve",
        summary="The provider's Stripe Connect account and its onboarding status",
        tags=["payments"],
        responses={200: ConnectedAccountSerializer, **error_responses(401, 403, 404)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        account = selectors.connected_account_for(organization=caller.organization)
        if account is None:
            raise NotFound("no connected account yet: POST to create one")
        return Response(ConnectedAccountSerializer(account).data)

    @extend_schema(
        operation_id="connected_account_create",
        summary="Create the provider's Stripe Connect Express account",
        tags=["payments"],
        request=_ConnectedAccountInput,
        responses={201: ConnectedAccountSerializer, **error_responses(400, 401, 403, 503)},
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = _ConnectedAccountInput(data=request.data)
        given.is_valid(raise_exception=True)
        account = services.connected_account_create(
            organization=caller.organization,
            country=given.validated_data.get("country"),
            email=given.validated_data.get("email", ""),
        )
        return Response(ConnectedAccountSerializer(account).data, status=status.HTTP_201_CREATED)


class AccountLinkApi(APIView):
    permission_classes = [IsProviderAdmin]

    @extend_schema(
        operation_id="connected_account_link",
        summary="A one-time Stripe onboarding link for the provider",
        tags=["payments"],
        request=_AccountLinkInput,
        responses={
            200: inline_serializer("AccountLink", {"url": serializers.URLField()}),
            **error_responses(400, 401, 403, 404, 503),
        },
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = _AccountLinkInput(data=request.data)
        given.is_valid(raise_exception=True)
        account = selectors.connected_account_for(organization=caller.organization)
        if account is None:
            raise NotFound("no connected account yet: create one first")
        url = services.account_link_create(
            connected_account=account,
            refresh_url=given.validated_data["refresh_url"],
            return_url=given.validated_data["return_url"],
        )
        return Response({"url": url})


class PayoutListApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="payouts_list",
        summary="The provider's payouts (all of them for operator finance)",
        tags=["payments"],
        responses={200: page_serializer(PayoutSerializer), **error_responses(400, 401, 403)},
    )
    def get(self, request: Request) -> Response:
        return paginated_response(
            queryset=selectors.payouts_for_caller(caller=get_caller(request)),
            serializer_class=PayoutSerializer,
            request=request,
            view=self,
        )


class PayoutDetailApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="payouts_retrieve",
        summary="One payout and the payable's journal lines it covers",
        tags=["payments"],
        responses={200: OpenApiTypes.OBJECT, **error_responses(401, 403, 404)},
    )
    def get(self, request: Request, payout_id: int) -> Response:
        payout = selectors.payout_get(caller=get_caller(request), payout_id=payout_id)
        return Response({"payout": PayoutSerializer(payout).data, "lines": _payout_lines(payout)})
