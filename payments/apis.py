"""HTTP endpoints of payments: top-ups and saved methods (buyers), refunds and the
reconciliation (operator finance), invoice collection attempts (buyers read their
own; operator finance may retry now), Connect onboarding and payouts (providers),
and Stripe's webhook. One view per operation; tenancy is decided in selectors.

Amounts go out as ``*_micros`` integers and decimal text, and come in as decimal
text (``"25.00"``), as everywhere in the API.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django.conf import settings
from django.utils.dateparse import parse_date
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import DecimalTextField, MoneyTextField
from core.converters import query_id
from core.errors import InvalidInput, NotFound
from core.idempotency import idempotency_key, idempotent
from core.money import CURRENCIES, Money, MoneyError
from core.pagination import page_serializer, paginated_response
from core.permissions import IsBuyerPayer, IsOrgMember, IsPlatformFinance
from core.schema import ErrorSerializer
from core.schema import error_responses as core_error_responses
from core.tenancy import Caller, get_caller
from payments import collection, selectors, services, webhooks
from payments.models import (
    ConnectedAccount,
    InvoicePayment,
    InvoiceRefund,
    Payout,
    Refund,
    TopUp,
)
from payments.stripe_client import PaymentsUnavailable
from payments.tasks import stripe_event_process_task

_PAYMENT_ERRORS = {
    402: "Stripe declined the payment: try another payment method",
    503: "payments are not configured here, or Stripe did not answer (retry)",
}


def error_responses(*codes: int) -> dict[int, Any]:
    ours = {
        code: OpenApiResponse(response=ErrorSerializer, description=_PAYMENT_ERRORS[code])
        for code in codes
        if code in _PAYMENT_ERRORS
    }
    return {**core_error_responses(*(c for c in codes if c not in _PAYMENT_ERRORS)), **ours}


def _actor(caller: Caller) -> str:
    if caller.api_key_id is not None:
        return f"api_key:{caller.api_key_id}"
    return f"user:{caller.user_id}"


def _amount(text: str, field: str, currency: str) -> int:
    try:
        amount = Money.parse(text, currency).amount_micros
    except MoneyError as exc:
        raise InvalidInput(f"{field}: {exc}", details={"field": field}) from None
    if amount <= 0:
        raise InvalidInput(f"{field}: must be positive", details={"field": field})
    return amount


def _require_buyer(caller: Caller) -> None:
    if not caller.organization.is_buyer:
        raise InvalidInput(
            f"{caller.organization.name} is not a buyer organization",
            details={"organization": caller.organization.pk},
        )


class IsProviderAdmin(BasePermission):
    message = "this needs the admin role in a provider organization"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = getattr(request, "caller", None)
        return caller is not None and caller.role == "admin" and caller.organization.is_provider


class IsProviderMember(BasePermission):
    message = "this needs a provider organization (or the operator's finance staff)"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = getattr(request, "caller", None)
        return caller is not None and (
            caller.organization.is_provider or caller.is_platform_finance
        )


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


# --- invoice collection and dunning ---------------------------------------------------


class InvoicePaymentSerializer(serializers.ModelSerializer):
    amount = MoneyTextField("amount_micros")
    received = MoneyTextField("received_micros")
    invoice_number = serializers.CharField(source="invoice.number", read_only=True)

    class Meta:
        model = InvoicePayment
        fields = [
            "id",
            "invoice",
            "invoice_number",
            "organization",
            "attempt",
            "trigger",
            "status",
            "amount_micros",
            "amount",
            "currency",
            "payment_intent_id",
            "received_micros",
            "received",
            "excess_micros",
            "failure_code",
            "failure_message",
            "created_at",
            "submitted_at",
            "resolved_at",
        ]


_INVOICE_PARAMETER = OpenApiParameter(
    "invoice", OpenApiTypes.INT, description="one invoice's attempts only"
)


def _query_invoice(request: Request) -> int | None:
    return query_id(request, "invoice", what="an invoice")


class InvoicePaymentListApi(APIView):
    permission_classes = [IsOrgMember]

    @extend_schema(
        operation_id="invoice_payments_list",
        summary="Attempts to charge the saved payment method for your invoices",
        description="Newest first. Operator finance staff see every organization's. "
        "An invoice that is not your organization's answers 404.",
        tags=["payments"],
        parameters=[_INVOICE_PARAMETER],
        responses={
            200: page_serializer(InvoicePaymentSerializer),
            **error_responses(400, 401, 404),
        },
    )
    def get(self, request: Request) -> Response:
        return paginated_response(
            queryset=selectors.invoice_payments_for_caller(
                caller=get_caller(request), invoice_id=_query_invoice(request)
            ),
            serializer_class=InvoicePaymentSerializer,
            request=request,
            view=self,
        )


class InvoiceRefundSerializer(serializers.ModelSerializer):
    amount = MoneyTextField("amount_micros")
    # Plain text in the schema: the same choices as a top-up refund's status, which
    # would make the schema's enum names collide.
    status = serializers.CharField(read_only=True, help_text="pending, succeeded or failed")

    class Meta:
        model = InvoiceRefund
        fields = [
            "id",
            "payment",
            "invoice",
            "amount_micros",
            "amount",
            "currency",
            "status",
            "origin",
            "credit_note",
            "stripe_refund_id",
            "reason",
            "credit_micros",
            "receivable_micros",
            "failure_message",
            "created_at",
            "resolved_at",
        ]


class InvoiceRefundInputSerializer(serializers.Serializer):
    amount = DecimalTextField(
        help_text="the credit note's amount before tax; its tax is refunded with it"
    )
    reason = serializers.CharField(max_length=500)


class InvoicePaymentDetailApi(APIView):
    permission_classes = [IsOrgMember]

    @extend_schema(
        operation_id="invoice_payments_retrieve",
        summary="One collection attempt, with its refunds",
        tags=["payments"],
        responses={
            200: inline_serializer(
                "InvoicePaymentDetail",
                {
                    "payment": InvoicePaymentSerializer(),
                    "refunds": InvoiceRefundSerializer(many=True),
                },
            ),
            **error_responses(401, 404),
        },
    )
    def get(self, request: Request, payment_id: int) -> Response:
        payment = selectors.invoice_payment_get(caller=get_caller(request), payment_id=payment_id)
        refunds = selectors.refunds_for_invoice_payment(payment=payment)
        return Response(
            {
                "payment": InvoicePaymentSerializer(payment).data,
                "refunds": InvoiceRefundSerializer(refunds, many=True).data,
            }
        )


class InvoicePaymentRefundApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoice_payments_refund",
        summary="Refund an invoice payment with a credit note (operator finance)",
        description="Issues a credit note of the amount (before tax) on the paid invoice "
        "and returns its total, tax included, to the card that paid. If Stripe refuses, "
        "the credit note stands as the buyer's prepaid credit.",
        tags=["payments"],
        request=InvoiceRefundInputSerializer,
        responses={
            201: InvoiceRefundSerializer,
            **error_responses(400, 401, 403, 404, 409, 422, 503),
        },
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, payment_id: int) -> Response:
        caller = get_caller(request)
        payment = selectors.invoice_payment_get(caller=caller, payment_id=payment_id)
        given = InvoiceRefundInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        refund = collection.invoice_payment_refund(
            payment_id=payment.pk,
            amount_micros=_amount(data["amount"], "amount", payment.currency),
            reason=data["reason"],
            actor=_actor(caller),
            request_key=f"api:{idempotency_key(request, required=True)}",
        )
        return Response(InvoiceRefundSerializer(refund).data, status=status.HTTP_201_CREATED)


def _collection_body(invoice: Any) -> dict[str, Any]:
    found = selectors.invoice_collection_for(invoice=invoice)
    owed = collection.collectible_micros(invoice)
    body: dict[str, Any] = {
        "invoice": invoice.pk,
        "invoice_number": invoice.number,
        "invoice_status": invoice.status,
        "amount_due_micros": owed,
        "amount_due": Money(owed, invoice.currency).format(),
        "currency": invoice.currency,
        "collection": None,
    }
    if found is not None:
        body["collection"] = {
            "status": found.status,
            "attempts": found.attempts,
            "retries_done": found.retries_done,
            "retries_scheduled": len(collection.retry_days()),
            "first_failed_at": found.first_failed_at,
            "next_retry_at": found.next_retry_at,
        }
    return body


class InvoiceCollectionApi(APIView):
    permission_classes = [IsOrgMember]

    @extend_schema(
        operation_id="invoice_collection_retrieve",
        summary="How an invoice is being collected: the dunning state and next retry",
        tags=["payments"],
        responses={200: OpenApiTypes.OBJECT, **error_responses(401, 404)},
    )
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = selectors.invoice_for_collection(
            caller=get_caller(request), invoice_id=invoice_id
        )
        return Response(_collection_body(invoice))


class InvoicePaymentRetryInputSerializer(serializers.Serializer):
    invoice = serializers.IntegerField(min_value=1, max_value=2**63 - 1)


class InvoicePaymentRetryApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoice_payments_retry",
        summary="Charge the buyer's saved payment method for an invoice now (operator finance)",
        description="An extra attempt outside the dunning schedule (which carries on if "
        "it fails). Answers with the attempt as Stripe left it: processing (the invoice "
        "is marked paid by Stripe's payment_intent.succeeded) or failed.",
        tags=["payments"],
        request=InvoicePaymentRetryInputSerializer,
        responses={
            201: InvoicePaymentSerializer,
            **error_responses(400, 401, 403, 404, 409, 422, 503),
        },
    )
    # Not atomic: it calls Stripe. The attempt row is keyed by the Idempotency-Key and
    # the PaymentIntent by the attempt, so a taken-over claim charges once.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = InvoicePaymentRetryInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = selectors.invoice_for_collection(
            caller=caller, invoice_id=given.validated_data["invoice"]
        )
        payment = collection.invoice_collection_retry(
            invoice=invoice,
            actor=_actor(caller),
            request_key=f"api:{idempotency_key(request, required=True)}",
        )
        return Response(InvoicePaymentSerializer(payment).data, status=status.HTTP_201_CREATED)


# --- Stripe's webhook ----------------------------------------------------------------


class StripeWebhookApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []

    @extend_schema(
        operation_id="stripe_webhook",
        summary="Stripe's webhook endpoint",
        description="Verifies Stripe-Signature on the raw body (300 s tolerance), "
        "stores the event by id and answers 200; a worker processes it.",
        tags=["payments"],
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 503)},
    )
    def post(self, request: Request) -> Response:
        secret = settings.STRIPE_WEBHOOK_SECRET
        if not secret:
            raise PaymentsUnavailable(
                "webhooks are not configured on this server: set STRIPE_WEBHOOK_SECRET"
            )
        row, created = webhooks.stripe_event_receive(
            payload=request.body,
            signature=request.headers.get("Stripe-Signature"),
            secret=secret,
        )
        if created:
            stripe_event_process_task.send(row.event_id)
        return Response({"received": row.event_id, "duplicate": not created})


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


# --- operator finance: reconciliation --------------------------------------------------


class ReconciliationApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="stripe_reconciliation_retrieve",
        summary="A day's reconciliation of Stripe clearing with Stripe (operator finance)",
        tags=["payments"],
        parameters=[
            OpenApiParameter("day", OpenApiTypes.DATE, required=True),
            OpenApiParameter("currency", OpenApiTypes.STR, enum=sorted(CURRENCIES)),
        ],
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 401, 403, 404)},
    )
    def get(self, request: Request) -> Response:
        raw = request.query_params.get("day", "")
        try:
            day: date | None = parse_date(raw)
        except ValueError:
            day = None
        if day is None:
            raise InvalidInput("day must be a date (YYYY-MM-DD)", details={"parameter": "day"})
        currency = request.query_params.get("currency", settings.TANDEM_CURRENCY)
        if currency not in CURRENCIES:
            raise InvalidInput("unknown currency", details={"parameter": "currency"})
        found = selectors.reconciliation_differences(day=day, currency=currency)
        if found.run is None:
            raise NotFound(f"no reconciliation for {day} yet")
        run = found.run
        return Response(
            {
                "day": run.day,
                "currency": run.currency,
                "ledger_micros": run.ledger_micros,
                "stripe_micros": run.stripe_micros,
                "matched": run.matched,
                "ran_at": run.ran_at,
                "differences": [
                    {
                        "kind": d.kind,
                        "source_id": d.source_id,
                        "ledger_micros": d.ledger_micros,
                        "stripe_micros": d.stripe_micros,
                        "transfer_ids": d.transfer_ids,
                        "balance_transactions": d.balance_transactions,
                    }
                    for d in found.differences
                ],
            }
        )
