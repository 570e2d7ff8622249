"""Buyers' top-ups (Payment Element, saved method, Stripe Checkout), their refunds
(operator finance), saved payment methods and auto-recharge."""

from __future__ import annotations

from typing import Any

from django.conf import settings
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

from core.api_fields import DecimalTextField, MoneyTextField
from core.errors import InvalidInput
from core.idempotency import idempotency_key, idempotent
from core.money import Money, MoneyError
from core.pagination import page_serializer, paginated_response
from core.permissions import IsBuyerPayer, IsOrgMember, IsPlatformFinance
from core.tenancy import get_caller
from payments import selectors, services
from payments.apis.common import _actor, _amount, _require_buyer, error_responses
from payments.models import Refund, TopUp

# --- serializers -----------------------------------------------------------------


class RefundSerializer(serializers.ModelSerializer):
    amount = MoneyTextField("amount_micros")

    class Meta:
        model = Refund
        fields = [
            "id",
            "top_up",
            "amount_micros",
            "amount",
            "currency",
            "status",
            "origin",
            "stripe_refund_id",
            "reason",
            "credit_micros",
            "receivable_micros",
            "failure_message",
            "created_at",
            "resolved_at",
        ]


class TopUpSerializer(serializers.ModelSerializer):
    amount = MoneyTextField("amount_micros")
    credited = MoneyTextField("credited_micros")

    class Meta:
        model = TopUp
        fields = [
            "id",
            "organization",
            "amount_micros",
            "amount",
            "currency",
            "source",
            "status",
            "payment_intent_id",
            "checkout_session_id",
            "checkout_url",
            "credited_micros",
            "credited",
            "failure_message",
            "created_at",
            "succeeded_at",
        ]


class TopUpStartedSerializer(TopUpSerializer):
    client_secret = serializers.CharField(
        help_text="for Stripe's Payment Element (stripe.confirmPayment); empty when a "
        "saved method was charged"
    )
    publishable_key = serializers.CharField()

    class Meta(TopUpSerializer.Meta):
        fields = [*TopUpSerializer.Meta.fields, "client_secret", "publishable_key"]


class TopUpInputSerializer(serializers.Serializer):
    amount = DecimalTextField(help_text='decimal text in the platform currency, e.g. "25.00"')
    use_saved_method = serializers.BooleanField(
        default=False, help_text="charge the saved payment method now instead"
    )


class CheckoutInputSerializer(serializers.Serializer):
    amount = DecimalTextField()
    success_url = serializers.URLField(max_length=2000)
    cancel_url = serializers.URLField(max_length=2000)


class RefundInputSerializer(serializers.Serializer):
    amount = DecimalTextField(
        required=False, help_text="omit for everything refundable (whole cents)"
    )
    reason = serializers.CharField(max_length=500)


class PaymentMethodInputSerializer(serializers.Serializer):
    payment_method = serializers.CharField(max_length=255)


class AutoRechargeSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    threshold = DecimalTextField()
    amount = DecimalTextField()
    daily_cap = DecimalTextField()


# --- buyers: top-ups ---------------------------------------------------------------


class TopUpListCreateApi(APIView):
    def get_permissions(self) -> list[BasePermission]:
        # Reading: any member. Spending the org's money: admin or finance.
        if self.request.method == "POST":
            return [IsBuyerPayer()]
        return [IsOrgMember()]

    @extend_schema(
        operation_id="top_ups_list",
        summary="The organization's top-ups (all of them for operator finance)",
        tags=["payments"],
        responses={200: page_serializer(TopUpSerializer), **error_responses(400, 401)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return paginated_response(
            queryset=selectors.top_ups_for_caller(caller=caller),
            serializer_class=TopUpSerializer,
            request=request,
            view=self,
        )

    @extend_schema(
        operation_id="top_ups_create",
        summary="Buy prepaid credit",
        description="Creates a Stripe PaymentIntent and returns its client secret for "
        "Stripe's Payment Element, or (use_saved_method) charges the saved payment method "
        "at once. Credit is granted only when Stripe confirms the payment "
        "(payment_intent.succeeded), never on the client's word.",
        tags=["payments"],
        request=TopUpInputSerializer,
        responses={
            201: TopUpStartedSerializer,
            **error_responses(400, 401, 402, 403, 409, 422, 429, 503),
        },
    )
    # Not atomic: it calls Stripe. The top-up row is keyed by the Idempotency-Key and
    # the PaymentIntent by the row, so a taken-over claim makes nothing twice.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        _require_buyer(caller)
        given = TopUpInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        currency = settings.TANDEM_CURRENCY
        amount = _amount(given.validated_data["amount"], "amount", currency)
        services.top_up_check_amount(amount_micros=amount, currency=currency)
        services.customer_ensure(organization=caller.organization)  # 503 before a row
        key = idempotency_key(request, required=True)
        top_up = services.top_up_record(
            organization=caller.organization,
            amount_micros=amount,
            currency=currency,
            source=TopUp.Source.SAVED_METHOD
            if given.validated_data["use_saved_method"]
            else TopUp.Source.PAYMENT_ELEMENT,
            request_key=f"api:{key}",
        )
        started = services.top_up_submit(top_up=top_up)
        body = dict(TopUpSerializer(started.top_up).data)
        body["client_secret"] = (
            started.client_secret if top_up.source == TopUp.Source.PAYMENT_ELEMENT else ""
        )
        body["publishable_key"] = settings.STRIPE_PUBLISHABLE_KEY
        return Response(body, status=status.HTTP_201_CREATED)


class TopUpCheckoutApi(APIView):
    permission_classes = [IsBuyerPayer]

    @extend_schema(
        operation_id="top_ups_checkout",
        summary="Buy prepaid credit on Stripe's hosted Checkout page",
        description="Returns the Checkout Session's URL; credit follows Stripe's "
        "checkout.session.completed webhook.",
        tags=["payments"],
        request=CheckoutInputSerializer,
        responses={201: TopUpSerializer, **error_responses(400, 401, 403, 422, 429, 503)},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        _require_buyer(caller)
        given = CheckoutInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        currency = settings.TANDEM_CURRENCY
        amount = _amount(data["amount"], "amount", currency)
        services.top_up_check_amount(amount_micros=amount, currency=currency)
        services.customer_ensure(organization=caller.organization)
        key = idempotency_key(request, required=True)
        top_up = services.top_up_record(
            organization=caller.organization,
            amount_micros=amount,
            currency=currency,
            source=TopUp.Source.CHECKOUT,
            request_key=f"api:{key}",
        )
        top_up = services.checkout_session_create(
            top_up=top_up, success_url=data["success_url"], cancel_url=data["cancel_url"]
        )
        return Response(TopUpSerializer(top_up).data, status=status.HTTP_201_CREATED)


class TopUpDetailApi(APIView):
    @extend_schema(
        operation_id="top_ups_retrieve",
        summary="One top-up, with its refunds",
        tags=["payments"],
        responses={
            200: inline_serializer(
                "TopUpDetail",
                {"top_up": TopUpSerializer(), "refunds": RefundSerializer(many=True)},
            ),
            **error_responses(401, 404),
        },
    )
    def get(self, request: Request, top_up_id: int) -> Response:
        top_up = selectors.top_up_get(caller=get_caller(request), top_up_id=top_up_id)
        refunds = selectors.refunds_for_top_up(top_up=top_up)
        return Response(
            {
                "top_up": TopUpSerializer(top_up).data,
                "refunds": RefundSerializer(refunds, many=True).data,
            }
        )


class RefundCreateApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="top_ups_refund",
        summary="Refund a top-up (operator finance)",
        description="Partial or full, up to the buyer's unused credit and what is left "
        "of the top-up. The credit is reserved at once and clawed back when Stripe "
        "accepts the refund.",
        tags=["payments"],
        request=RefundInputSerializer,
        responses={201: RefundSerializer, **error_responses(400, 401, 403, 404, 409, 422, 503)},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, top_up_id: int) -> Response:
        caller = get_caller(request)
        top_up = selectors.top_up_get(caller=caller, top_up_id=top_up_id)
        given = RefundInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        amount = _amount(data["amount"], "amount", top_up.currency) if "amount" in data else None
        refund = services.refund_create(
            top_up_id=top_up.pk, amount_micros=amount, reason=data["reason"], actor=_actor(caller)
        )
        return Response(RefundSerializer(refund).data, status=status.HTTP_201_CREATED)


class PaymentMethodSaveApi(APIView):
    permission_classes = [IsBuyerPayer]

    @extend_schema(
        operation_id="payment_methods_save",
        summary="Save the payment method charged directly and by auto-recharge",
        tags=["payments"],
        request=PaymentMethodInputSerializer,
        responses={
            200: inline_serializer(
                "SavedPaymentMethod",
                {"customer": serializers.CharField(), "payment_method": serializers.CharField()},
            ),
            **error_responses(400, 401, 402, 403, 503),
        },
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        _require_buyer(caller)
        given = PaymentMethodInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        customer = services.payment_method_save(
            organization=caller.organization,
            payment_method_id=given.validated_data["payment_method"],
        )
        return Response(
            {"customer": customer.customer_id, "payment_method": customer.default_payment_method}
        )


class AutoRechargeApi(APIView):
    def get_permissions(self) -> list[BasePermission]:
        if self.request.method == "PUT":
            return [IsBuyerPayer()]
        return [IsOrgMember()]

    @staticmethod
    def _body(row: Any) -> dict[str, Any]:
        if row is None:
            return {"enabled": False}
        money = lambda micros: Money(micros, row.currency).format()  # noqa: E731
        return {
            "enabled": row.enabled,
            "currency": row.currency,
            "threshold": money(row.threshold_micros),
            "amount": money(row.amount_micros),
            "daily_cap": money(row.daily_cap_micros),
            "armed": row.armed,
            "crossings": row.crossings,
            "last_triggered_at": row.last_triggered_at,
        }

    @extend_schema(
        operation_id="auto_recharge_retrieve",
        summary="The organization's auto-recharge setting",
        tags=["payments"],
        responses={200: OpenApiTypes.OBJECT, **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return Response(self._body(selectors.auto_recharge_for(organization=caller.organization)))

    @extend_schema(
        operation_id="auto_recharge_set",
        summary="Set auto-recharge: below threshold, charge amount (at most daily_cap a day)",
        tags=["payments"],
        request=AutoRechargeSerializer,
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 401, 403)},
    )
    def put(self, request: Request) -> Response:
        caller = get_caller(request)
        _require_buyer(caller)
        given = AutoRechargeSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        currency = settings.TANDEM_CURRENCY
        try:
            threshold = Money.parse(data["threshold"], currency).amount_micros
        except MoneyError as exc:
            raise InvalidInput(f"threshold: {exc}", details={"field": "threshold"}) from None
        row = services.auto_recharge_set(
            organization=caller.organization,
            enabled=data["enabled"],
            threshold_micros=threshold,
            amount_micros=_amount(data["amount"], "amount", currency),
            daily_cap_micros=_amount(data["daily_cap"], "daily_cap", currency),
            currency=currency,
        )
        return Response(self._body(row))
