"""An invoice's lifecycle (operator finance): finalize, void, mark uncollectible or
paid, and the invoice of one fine-tune job."""

from __future__ import annotations

from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import (
    MAX_DB_ID,
    MAX_REASON_LENGTH,
    actor_for,
)
from core.idempotency import idempotent
from core.permissions import IsPlatformFinance
from core.schema import error_responses
from core.tenancy import Caller, get_caller
from invoicing import selectors
from invoicing import services as invoicing
from invoicing.apis.common import _INVOICE_ID
from invoicing.apis.invoices import InvoiceDetailSerializer
from invoicing.models import Invoice


class ReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)


class OptionalReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH, required=False, default="")


class MarkPaidInputSerializer(serializers.Serializer):
    payment_reference = serializers.CharField(
        max_length=255, help_text="the bank transfer's reference, or another payment's id"
    )


class JobInvoiceInputSerializer(serializers.Serializer):
    organization = serializers.IntegerField(min_value=1, max_value=MAX_DB_ID)
    job = serializers.CharField(max_length=200, help_text="the fine-tune job's id")


def _invoice_answer(caller: Caller, invoice: Invoice) -> Response:
    fresh = selectors.invoice_get(caller=caller, invoice_id=invoice.pk)
    return Response(InvoiceDetailSerializer(fresh).data)


_LIFECYCLE_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429)


class InvoiceFinalizeApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_finalize",
        summary="Finalize a draft now (operator finance)",
        description="Numbers it, posts rounding, tax and the prepaid credit applied, and "
        "freezes its document. A monthly draft only once its month has ended; a final "
        "invoice is answered as it is.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=None,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    # Not atomic: finalizing closes the usage month and catches rating up in
    # transactions of its own; a finalized invoice stays as it is, so a retry is safe.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        invoice = invoicing.invoice_finalize_requested(invoice=invoice, actor=actor_for(caller))
        return _invoice_answer(caller, invoice)


class InvoiceVoidApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_void",
        summary="Void an unpaid finalized invoice (operator finance)",
        description="Reverses everything it posted; its number stays used. An invoice "
        "with payments or credit notes is corrected by a credit note instead (409).",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=ReasonInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = ReasonInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_void(
            invoice=invoice, reason=given.validated_data["reason"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)


class InvoiceMarkUncollectibleApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_mark_uncollectible",
        summary="Write off what is still owed on an invoice (operator finance)",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=OptionalReasonInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = OptionalReasonInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_mark_uncollectible(
            invoice=invoice, reason=given.validated_data["reason"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)


class InvoiceMarkPaidApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_mark_paid",
        summary="Record that an invoice was paid outside Stripe (operator finance)",
        description="A bank transfer or another manual payment of everything still "
        "owed: the receivable is settled and the invoice closed. The same reference "
        "again changes nothing.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=MarkPaidInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = MarkPaidInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_mark_paid(
            invoice=invoice,
            payment_reference=given.validated_data["payment_reference"],
            actor=actor_for(caller),
        )
        return _invoice_answer(caller, invoice)


class JobInvoiceIssueApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_job_issue",
        summary="Invoice one ended fine-tune job on its own, now (operator finance)",
        description="Finalized at once, with the per-job minimum applied; the job then "
        "stays off the monthly invoice. Asking again answers the same invoice.",
        tags=["invoices"],
        request=JobInvoiceInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = JobInvoiceInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        organization = selectors.organization_for_caller(
            caller=caller, organization_id=given.validated_data["organization"]
        )
        invoice = invoicing.invoice_job_request(
            organization=organization, job=given.validated_data["job"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)
