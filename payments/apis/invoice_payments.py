"""Invoice collection attempts: buyers read their own; operator finance may retry
now and refund a payment (through a credit note)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import DecimalTextField, MoneyTextField
from core.converters import query_id
from core.idempotency import idempotency_key, idempotent
from core.money import Money
from core.pagination import page_serializer, paginated_response
from core.permissions import IsOrgMember, IsPlatformFinance
from core.tenancy import get_caller
from payments import selectors, services
from payments.apis.common import _actor, _amount, error_responses
from payments.models import InvoicePayment, InvoiceRefund

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
        refund = services.invoice_payment_refund(
            payment_id=payment.pk,
            amount_micros=_amount(data["amount"], "amount", payment.currency),
            reason=data["reason"],
            actor=_actor(caller),
            request_key=f"api:{idempotency_key(request, required=True)}",
        )
        return Response(InvoiceRefundSerializer(refund).data, status=status.HTTP_201_CREATED)


def _collection_body(invoice: Any) -> dict[str, Any]:
    found = selectors.invoice_collection_for(invoice=invoice)
    owed = services.collectible_micros(invoice)
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
            "retries_scheduled": len(services.retry_days()),
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
        payment = services.invoice_collection_retry(
            invoice=invoice,
            actor=_actor(caller),
            request_key=f"api:{idempotency_key(request, required=True)}",
        )
        return Response(InvoicePaymentSerializer(payment).data, status=status.HTTP_201_CREATED)
