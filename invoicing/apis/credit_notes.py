"""Credit notes: the list, and issuing one against a finalized invoice."""

from __future__ import annotations

from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import (
    MAX_REASON_LENGTH,
    DecimalTextField,
    MoneyText,
    actor_for,
)
from core.errors import InvalidInput
from core.idempotency import idempotency_key, idempotent
from core.money import Money, MoneyError
from core.pagination import page_serializer, paginated_response
from core.permissions import IsPlatformFinance
from core.schema import error_responses
from core.tenancy import get_caller
from invoicing import selectors
from invoicing import services as invoicing
from invoicing.apis.common import _INVOICE_ID


class CreditNoteSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    invoice = serializers.IntegerField(source="invoice_id", read_only=True)
    number = serializers.CharField(read_only=True)
    currency = serializers.CharField(read_only=True)
    amount_micros = serializers.IntegerField(read_only=True, help_text="before tax")
    amount = MoneyText("amount_micros")
    tax_micros = serializers.IntegerField(read_only=True)
    tax = MoneyText("tax_micros")
    total_micros = serializers.IntegerField(read_only=True)
    total = MoneyText("total_micros")
    to_receivable_micros = serializers.IntegerField(
        read_only=True, help_text="taken off what the buyer owed on the invoice"
    )
    to_receivable = MoneyText("to_receivable_micros")
    to_credit_micros = serializers.IntegerField(
        read_only=True, help_text="given back as prepaid credit"
    )
    to_credit = MoneyText("to_credit_micros")
    reason = serializers.CharField(read_only=True)
    entry_position = serializers.IntegerField(
        read_only=True, help_text="the journal entry that posted it"
    )
    issued_at = serializers.DateTimeField(read_only=True)
    issued_by = serializers.CharField(read_only=True)


class CreditNoteInputSerializer(serializers.Serializer):
    amount = DecimalTextField(help_text="before tax, whole cents; the tax on it is added")
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)


class CreditNoteListApi(APIView):
    @extend_schema(
        operation_id="invoices_credit_notes_list",
        summary="The credit notes issued on an invoice, newest first",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={
            200: page_serializer(CreditNoteSerializer),
            **error_responses(400, 401, 404, 429),
        },
    )
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = selectors.invoice_get(caller=get_caller(request), invoice_id=invoice_id)
        return paginated_response(
            queryset=selectors.credit_notes_of(invoice=invoice),
            serializer_class=CreditNoteSerializer,
            request=request,
            view=self,
        )


class CreditNoteCreateApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_credit_notes_create",
        summary="Issue a credit note on a finalized invoice (operator finance)",
        description="amount is before tax, in whole cents; the tax on it is given back "
        "too. What the buyer still owes on the invoice is reduced first, the rest "
        "becomes prepaid credit. All credit notes together may not exceed the "
        "invoice's subtotal.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=CreditNoteInputSerializer,
        responses={
            201: CreditNoteSerializer,
            **error_responses(400, 401, 403, 404, 409, 422, 429),
        },
    )
    # Not atomic: the ledger runs its own transaction; the credit note is keyed by the
    # Idempotency-Key, so a taken-over claim issues nothing twice.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        key = idempotency_key(request, required=True)
        given = CreditNoteInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            amount = Money.parse(given.validated_data["amount"], invoice.currency).amount_micros
        except MoneyError as exc:
            raise InvalidInput(f"amount: {exc}", details={"field": "amount"}) from None
        note = invoicing.credit_note_issue(
            invoice=invoice,
            amount_micros=amount,
            reason=given.validated_data["reason"],
            key=f"api:{caller.organization.pk}:{key}",
            actor=actor_for(caller),
        )
        return Response(CreditNoteSerializer(note).data, status=status.HTTP_201_CREATED)
